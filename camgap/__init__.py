"""camgap: how well will a trained image classifier generalize? Grad-CAM / object-box IoU
on the training data (Du, Zhou, Dai 2024), model sets over hyperparameter grids, and the study."""

__version__ = "0.1.0"
