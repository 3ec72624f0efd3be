"""Sample-quality metrics: Fréchet distance on Inception (FID) or dataset-CNN features, k-NN precision/recall,
Inception Score and KID (through torch-fidelity), and a dataset classifier's conditional accuracy.

Every metric is one entry of :data:`METRICS` (``metrics.py``: what it needs, its format, its results.csv column);
``evaluate.evaluate(EvalRequest(...))`` is the evaluation both ``python -m archbench.eval`` and the study run.
Everything runs offline: feature-network weights come from local files (see ``inception`` and ``dataset_cnn``)
and real-data statistics are cached under ``$ARCHBENCH_CACHE`` (default ``~/.cache/archbench``).
"""

from archbench.evaluation.cache import cache_dir, sha256_file
from archbench.evaluation.dataset_cnn import (
    CNN_DATASETS,
    ChecksumMismatchError,
    DatasetCNN,
    DatasetCNNFeatures,
    FeatureWeightsMissing,
    default_cnn_path,
    load_cnn,
)
from archbench.evaluation.extractor import FeatureExtractor, extractor_outputs
from archbench.evaluation.features import extract_features, feature_stats, iter_features
from archbench.evaluation.fidelity import inception_score, kernel_inception_distance
from archbench.evaluation.frechet import frechet_distance
from archbench.evaluation.inception import InceptionFeatures, InceptionWeightsMissing, find_inception_weights
from archbench.evaluation.metrics import METRICS, Metric, result_line
from archbench.evaluation.networks import FEATURE_NETWORKS, get_feature_extractor
from archbench.evaluation.precision_recall import PrecisionRecall, precision_recall
from archbench.evaluation.reference import ReferenceBatchError, adm_reference, reference_key, reference_stats
from archbench.evaluation.sample_files import SampleFile, SampleFileError
from archbench.evaluation.score import score_samples
from archbench.evaluation.stats import FeatureStats, StatsAccumulator
from archbench.evaluation.train_cnn import train_dataset_cnn

__all__ = [
    "CNN_DATASETS",
    "FEATURE_NETWORKS",
    "METRICS",
    "ChecksumMismatchError",
    "DatasetCNN",
    "DatasetCNNFeatures",
    "FeatureExtractor",
    "FeatureStats",
    "FeatureWeightsMissing",
    "InceptionFeatures",
    "InceptionWeightsMissing",
    "Metric",
    "PrecisionRecall",
    "ReferenceBatchError",
    "SampleFile",
    "SampleFileError",
    "StatsAccumulator",
    "adm_reference",
    "cache_dir",
    "default_cnn_path",
    "extract_features",
    "extractor_outputs",
    "feature_stats",
    "find_inception_weights",
    "frechet_distance",
    "get_feature_extractor",
    "inception_score",
    "iter_features",
    "kernel_inception_distance",
    "load_cnn",
    "precision_recall",
    "reference_key",
    "reference_stats",
    "result_line",
    "score_samples",
    "sha256_file",
    "train_dataset_cnn",
]
