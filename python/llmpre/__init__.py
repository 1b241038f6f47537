"""llmpre: LLM pretraining on PaddlePaddle.

Importing the package is cheap: Paddle is imported only by the parts that
need it (models, training), so the data tools run without it.
"""

__version__ = "0.1.0"
