"""Project exceptions (STYLE R30). Messages name the stage and field, show the value, and say what to do."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class for every error fusegen raises on purpose."""


class PipelineConfigError(PipelineError):
    """A config file or `--set` override is invalid; raised before any work starts."""


class StageInputError(PipelineError):
    """A stage's input is unusable as a whole (missing column, wrong type, unreadable or empty file)."""


class RunDirError(PipelineError):
    """The run directory belongs to another pipeline or package version, or is corrupt."""


class LedgerError(PipelineError):
    """rows_in != rows_out + filtered + rejected for a stage: rows were lost or invented."""


class InferenceHungError(PipelineError):
    """An LLM engine stopped answering: `llm.max_consecutive_timeouts` calls in a row timed out."""


class StageStalledError(PipelineError):
    """A stage finished no block within `resources.stall_timeout_s` (hung actors, any backend)."""


class PublishError(PipelineError):
    """`fusegen card` / `fusegen push` cannot go on: no export yet, an unbalanced ledger, a bad repo
    name, no Hub token, or the Hub refused the request."""


class StageUnschedulableError(PipelineError):
    """A stage's actors ask for resources no node of the Ray cluster has (they would wait forever)."""


class ExportError(PipelineError):
    """`fusegen export` / `fusegen validate` cannot go on: the run is not finished or has no GME export,
    the out dir holds another run's files, or the folder is no export fusegen knows."""


class EvalError(PipelineError):
    """`fusegen eval` cannot evaluate this input (no triplets, leaking splits, nothing to hold out)."""
