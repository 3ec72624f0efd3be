"""The committed Fashion-MNIST CNN as a judge of class-conditional samples: real images of a class score high,
the same images with the wrong labels score low, and a dataset without a committed CNN gives None."""

from __future__ import annotations

import pytest
import torch

from archbench.evaluation.cond_accuracy import classifier_accuracy, committed_classifier


def test_real_images_are_recognised_and_wrong_labels_are_not():
    from archbench.data import build_dataset

    try:
        data = build_dataset("fashion_mnist", split="test", image_size=16)
    except Exception as exc:  # the Debian package is not installed here
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    images = torch.stack([data[i][0] for i in range(400)])
    labels = torch.tensor([int(data[i][1]) for i in range(400)])
    right = classifier_accuracy(images, labels, "fashion_mnist")
    wrong = classifier_accuracy(images, (labels + 1) % 10, "fashion_mnist")
    assert right > 0.7 and wrong < 0.2


def test_no_committed_classifier_means_no_accuracy():
    assert committed_classifier("digits") is None
    assert classifier_accuracy(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), "digits") is None
