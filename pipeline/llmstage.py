"""The skeleton every JSON-producing LLM stage shares: prepare -> render -> generate -> parse -> decide.

A subclass names its prompt files, a glue function that adds `_messages` to a shard (render), the
JSON schema the model must follow, and a glue function that parses `_raw` into its output columns
and sets `_status` / `_reason` (parse and decide). The backend in between (transformers, vllm,
openai) comes from the stage's `llm` config, so every LLM stage runs on every backend the same way.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

from pipeline.config import to_dict
from pipeline.models.llm import generate_json
from pipeline.prompts import load_sources
from pipeline.scheduling import Phase
from pipeline.stage import Stage, glue_map


class LLMStage(Stage):
    # Ray Data tasks: (table, sources, cfg) -> table with `_messages`; (table, cfg) -> parsed table.
    render_batch: ClassVar[Callable]
    parse_batch: ClassVar[Callable]

    def check_prompts(self) -> None:
        """Render one made-up row on the driver, so a template variable the stage lacks fails early."""

    @abc.abstractmethod
    def schema(self) -> dict:
        """The JSON schema the model's output must follow."""

    def prepare(self) -> None:
        from pipeline.models.sources import resolve_model

        self.sources = load_sources(self.context.prompts_dir, self.prompt_files)
        self.check_prompts()
        llm = self.config.llm
        self.model_path, self.model_id = resolve_model(
            llm.model, self.context.cache_dir, llm.fallback_model, f"{self.name}.llm"
        )

    def models(self) -> dict[str, str]:
        llm = self.config.llm
        int8 = ", Linear layers int8" if llm.quantize == "int8" and llm.backend == "transformers" else ""
        return {"llm": f"{self.model_id}{int8} via {llm.backend}"}

    def schedule(self) -> tuple[Phase, ...]:
        """The LLM backend's pools (glue tasks around it take no CPU)."""
        from pipeline.models.llm import llm_pools

        return (Phase(self.name, llm_pools(self.config.llm, self.config.resources, self.name, f"{self.name}.llm")),)

    def apply(self, ds: Any) -> Any:
        cfg = to_dict(self.config)
        render, parse = type(self).render_batch, type(self).parse_batch
        ds = glue_map(ds, render, fn_kwargs={"sources": self.sources, "cfg": cfg})
        ds = generate_json(ds, self.config.llm, self.model_path, self.schema(), self.config.resources, self.name)
        return glue_map(ds, parse, fn_kwargs={"cfg": cfg})
