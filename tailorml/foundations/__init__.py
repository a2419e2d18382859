"""The foundations under every model, in numpy only: linear and logistic regression, a softmax
classifier and a multi-layer perceptron with hand-written backpropagation, each with sklearn's
fit/predict. Teaching code that is also checked: every gradient here is compared with finite
differences and torch autograd in tests/test_foundations.py. Guide: docs/foundations.md.

This package imports nothing else from tailorml (and never torch): it can be read, copied and
run on its own.

    activations.py  relu, sigmoid, tanh and their derivatives; softmax
    losses.py       MSE, cross-entropy, binary cross-entropy, each with its gradient
    layers.py       the fully connected layer, forward and backward
    network.py      a stack of layers and backpropagation through it
    optim.py        SGD with momentum, Adam
    loop.py         epochs of shuffled mini-batches
    linear.py       linear regression: least squares, gradient descent
    classifiers.py  logistic regression, the softmax classifier
    mlp.py          MLPClassifier, MLPRegressor
"""

from .base import NotFittedError
from .classifiers import LogisticRegression, SoftmaxClassifier
from .linear import LinearRegression
from .mlp import MLPClassifier, MLPRegressor
from .network import Network
from .optim import SGD, Adam

__all__ = [
    "SGD",
    "Adam",
    "LinearRegression",
    "LogisticRegression",
    "MLPClassifier",
    "MLPRegressor",
    "Network",
    "NotFittedError",
    "SoftmaxClassifier",
]
