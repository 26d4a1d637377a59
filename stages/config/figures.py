"""The figure specs of a workflow config (``figures:``) and their checks against the tables they read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from stages.config.run import MethodName
from stages.methods import method_spec
from stages.strict import Strict

if TYPE_CHECKING:
    from stages.config.workflow import TableSpec


FigureName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class GroupFigureSpec(Strict):
    """Figure 2: per subgroup, each method's top-1 minus zero-shot's (one panel per benchmark).

    Bars are the table's rows (zero-shot and WiSE-FT rows aside), mean ± std over seeds of the
    per-seed difference to the zero-shot run of the same arch and train set.
    """

    kind: Literal["groups"]
    title: str
    table: int = Field(description="the table whose runs (archs, train sets, methods, seeds) the figure reads")
    benchmarks: list[str] = Field(min_length=1, description="group-shift benchmarks among the table's columns")
    methods: list[MethodName] | None = Field(None, description="methods drawn (default: the table's, zero-shot aside)")


class TradeoffFigureSpec(Strict):
    """ID vs OOD as a knob varies: StarFT's λ (``lambda``, Table 10) or WiSE-FT's α (``alpha``, Table 8).

    One point per λ (StarFT rows) or per α (each method's ensembled row), mean ± std over seeds
    on both axes.
    """

    kind: Literal["lambda", "alpha"]
    title: str
    table: int = Field(description="the table whose runs and columns the figure reads (lams or alphas)")
    x: str = Field(description="column or average label on the x axis (e.g. the ID column)")
    y: str = Field(description="column or average label on the y axis (e.g. an OOD or group metric)")
    methods: list[MethodName] | None = Field(None, description="methods drawn (default: the table's, zero-shot aside)")


class LossFigureSpec(Strict):
    """Training curves: a train_log.jsonl field over optimiser steps, one curve per method, mean ± std over seeds."""

    kind: Literal["loss"]
    title: str
    table: int = Field(description="the table whose trained runs the figure reads (their train_log.jsonl)")
    field: str = Field("loss", description="the train_log.jsonl key drawn (loss, loss_clip, loss_star, lr, ...)")
    methods: list[MethodName] | None = Field(None, description="methods drawn (default: the table's, zero-shot aside)")


class GradcamFigureSpec(Strict):
    """Grad-CAM of the predicted class (the paper's Figure 3): one row per image, the image then one map per method.

    Each method's run is the first of the table's grid for that method (its first arch, train set,
    variant, bank, concept and λ) at `seed`; zero-shot is the pretrained model. A map is that of
    the class the run predicts, through the head its evaluation scores the benchmark with.
    """

    kind: Literal["gradcam"]
    title: str
    table: int = Field(description="the table whose runs the figure draws")
    benchmark: str = Field(description="the benchmark whose images are drawn (read from data_root)")
    methods: list[MethodName] = Field(["zeroshot", "flyp", "starft"], min_length=1,
                                  description="one column per method, in this order")
    images: int = Field(4, ge=1, le=64, description="rows: this many images, evenly spaced over the benchmark's "
                        "images (over each of `groups` in turn when given)")
    groups: list[str] | None = Field(None, description="draw only images of these groups of a group-shift "
                                     "benchmark (e.g. its minority groups)")
    indices: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="exact image indices "
                                                              "(instead of `images` and `groups`)")
    seed: int | None = Field(None, description="seed of the drawn runs (default: the table's first seed)")


FigureSpec = Annotated[GroupFigureSpec | TradeoffFigureSpec | LossFigureSpec | GradcamFigureSpec,
                      Field(discriminator="kind")]


def check_figure(key: str, figure: FigureSpec, tables: dict[int, TableSpec], seeds: list[int]) -> None:
    """A figure's table exists and has what the figure plots (benchmarks, labels, λ or α sweep, runs)."""
    if figure.table not in tables:
        raise ValueError(f"{key}.table: no table {figure.table}; tables: {sorted(tables)}")
    table = tables[figure.table]
    unknown = sorted(set(figure.methods or ()) - set(table.methods))
    if unknown:
        raise ValueError(f"{key}.methods: {unknown} are not in tables.{figure.table}.methods {table.methods}")
    if isinstance(figure, LossFigureSpec):
        return
    if isinstance(figure, GradcamFigureSpec):
        seeds = table.seeds or seeds
        if figure.seed is not None and figure.seed not in seeds:
            raise ValueError(f"{key}.seed: {figure.seed} is not a seed of tables.{figure.table} ({seeds})")
        return
    if isinstance(figure, GroupFigureSpec):
        benchmarks = {column.benchmark for column in table.columns}
        unknown = sorted(set(figure.benchmarks) - benchmarks)
        if unknown:
            raise ValueError(f"{key}.benchmarks: {unknown} are not benchmarks of tables.{figure.table}.columns "
                             f"({sorted(benchmarks)})")
        if all(method_spec(method).trains for method in table.methods):
            raise ValueError(f"{key}: tables.{figure.table}.methods needs a method that does not train, "
                             "such as zeroshot (the reference of the bars)")
        return
    labels = [column.label for column in table.columns] + list(table.averages)
    for axis in ("x", "y"):
        if getattr(figure, axis) not in labels:
            raise ValueError(f"{key}.{axis}: {getattr(figure, axis)!r} is not a column of tables.{figure.table}; "
                             f"its columns and averages: {labels}")
    if figure.kind == "lambda" and not (table.lams and any(method_spec(m).uses_lambda for m in table.methods)):
        raise ValueError(f"{key}: kind lambda needs tables.{figure.table}.lams and a method that uses λ "
                         "(starft) in its methods")
    if figure.kind == "alpha" and not table.alphas:
        raise ValueError(f"{key}: kind alpha needs tables.{figure.table}.alphas (a WiSE-FT α grid)")
