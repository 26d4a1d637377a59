"""Pydantic models of the pipeline's configuration, in three layers, each owned by whom it concerns.

- ``stages.config.run``: one training run (``TrainConfig`` and its parts, ``load_train_config``);
- ``stages.config.workflow``: the workflow grid (``WorkflowConfig``, tables, resources, demo settings);
- ``stages.config.figures``: the figure specs and their checks against the tables they read.

Every public name of the three is importable from here (``from stages.config import TrainConfig``).
Importing any of them imports neither torch nor a method module (the registry is read on validation).
"""

from stages.errors import ConfigError
from stages.config.run import (  # noqa: F401
    Concept,
    Tracker,
    Precision,
    Suffix,
    Decay,
    Select,
    ImageCheck,
    SaveDtype,
    Accumulation,
    MethodName,
    ModelConfig,
    CsvOptions,
    WebDatasetOptions,
    DataSettings,
    DataConfig,
    VariantSpec,
    SpuriousConfig,
    OptimConfig,
    MethodOptions,
    override_options,
    RunSettings,
    TrainConfig,
    EXECUTION_FIELDS,
    without_execution,
    load_train_config,
    validation_message,
)
from stages.config.workflow import (  # noqa: F401
    Metric,
    MetricFormat,
    METRIC_FORMATS,
    RowSlot,
    NonNegative,
    Fraction,
    TrainSetSpec,
    BankSpec,
    ColumnSpec,
    TableSpec,
    IntervalMetric,
    ClaimSpec,
    ClaimsSpec,
    check_claims,
    DescriptorsSettings,
    RuleResources,
    ResourcesSpec,
    DemoSettings,
    WorkflowConfig,
    validate_workflow_config,
    workflow_schema,
)
from stages.config.figures import (  # noqa: F401
    FigureName,
    GroupFigureSpec,
    TradeoffFigureSpec,
    LossFigureSpec,
    GradcamFigureSpec,
    FigureSpec,
    check_figure,
)

__all__ = ['Accumulation', 'BankSpec', 'ClaimSpec', 'ClaimsSpec', 'ColumnSpec', 'Concept', 'ConfigError', 'CsvOptions', 'DataConfig', 'DataSettings', 'Decay', 'DemoSettings', 'DescriptorsSettings', 'EXECUTION_FIELDS', 'FigureName', 'FigureSpec', 'Fraction', 'GradcamFigureSpec', 'GroupFigureSpec', 'ImageCheck', 'IntervalMetric', 'LossFigureSpec', 'METRIC_FORMATS', 'MethodName', 'MethodOptions', 'Metric', 'MetricFormat', 'ModelConfig', 'NonNegative', 'OptimConfig', 'Precision', 'ResourcesSpec', 'RowSlot', 'RuleResources', 'RunSettings', 'SaveDtype', 'Select', 'SpuriousConfig', 'Suffix', 'TableSpec', 'Tracker', 'TradeoffFigureSpec', 'TrainConfig', 'TrainSetSpec', 'VariantSpec', 'WebDatasetOptions', 'WorkflowConfig', 'check_claims', 'check_figure', 'load_train_config', 'override_options', 'validate_workflow_config', 'validation_message', 'without_execution', 'workflow_schema']
