"""Sample-quality metrics: Fréchet distance on Inception (FID) or dataset-CNN features, and k-NN precision/recall.

Everything runs offline: feature-network weights come from local files (see ``inception`` and ``dataset_cnn``)
and real-data statistics are cached under ``$ARCHBENCH_CACHE`` (default ``~/.cache/archbench``).
"""

from archbench.metrics.cache import cache_dir, sha256_file
from archbench.metrics.dataset_cnn import (
    CNN_DATASETS,
    ChecksumMismatchError,
    DatasetCNN,
    DatasetCNNFeatures,
    FeatureWeightsMissing,
    default_cnn_path,
    load_cnn,
)
from archbench.metrics.extractor import FeatureExtractor
from archbench.metrics.features import extract_features, feature_stats, iter_features
from archbench.metrics.frechet import frechet_distance
from archbench.metrics.inception import InceptionFeatures, InceptionWeightsMissing, find_inception_weights
from archbench.metrics.networks import FEATURE_NETWORKS, get_feature_extractor
from archbench.metrics.precision_recall import PrecisionRecall, precision_recall
from archbench.metrics.reference import reference_key, reference_stats
from archbench.metrics.score import score_samples
from archbench.metrics.stats import FeatureStats, StatsAccumulator
from archbench.metrics.train_cnn import train_dataset_cnn

__all__ = [
    "CNN_DATASETS",
    "FEATURE_NETWORKS",
    "ChecksumMismatchError",
    "DatasetCNN",
    "DatasetCNNFeatures",
    "FeatureExtractor",
    "FeatureStats",
    "FeatureWeightsMissing",
    "InceptionFeatures",
    "InceptionWeightsMissing",
    "PrecisionRecall",
    "StatsAccumulator",
    "cache_dir",
    "default_cnn_path",
    "extract_features",
    "feature_stats",
    "find_inception_weights",
    "frechet_distance",
    "get_feature_extractor",
    "iter_features",
    "load_cnn",
    "precision_recall",
    "reference_key",
    "reference_stats",
    "score_samples",
    "sha256_file",
    "train_dataset_cnn",
]
