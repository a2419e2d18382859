from tailorml.config.load import apply_overrides, dump_config, load_config, validate_mapping
from tailorml.config.schema import DataConfig, ModelConfig, RunConfig, TaskConfig, TrainConfig

__all__ = [
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_overrides",
    "dump_config",
    "load_config",
    "validate_mapping",
]
