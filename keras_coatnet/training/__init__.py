"""Training: data pipelines, the paper's recipe, strategies, the train command."""

from keras_coatnet.training.recipe import DIGITS, PAPER, Recipe
from keras_coatnet.training.train import main, parser, train

__all__ = ["DIGITS", "PAPER", "Recipe", "main", "parser", "train"]
