"""pass@k columns: each system writes `code_samples` programs per task, the sandbox runs them with the tests."""

from __future__ import annotations

from tunesmith.config import EvalConfig
from tunesmith.errors import ConfigError
from tunesmith.eval import stats
from tunesmith.eval.sections.base import EvalContext, EvalSection, SectionResult, register
from tunesmith.eval.sections.generation import generate_for
from tunesmith.eval.table import Column


@register
class PassAtK(EvalSection):
    name = "pass@k"
    order = 30

    def enabled(self, cfg: EvalConfig) -> bool:
        return bool(cfg.code_tasks)

    def validate(self, cfg: EvalConfig) -> None:
        if not cfg.code_tasks:
            return
        too_big = [k for k in cfg.pass_k if k > cfg.code_samples or k < 1]
        if too_big:
            raise ConfigError(f"eval.pass_k: {too_big} not in 1..code_samples ({cfg.code_samples})",
                              hint="sample at least k programs per task: raise eval.code_samples")
        if max(cfg.pass_k) > 1 and cfg.temperature == 0 and cfg.code_samples > 1:
            raise ConfigError("eval.pass_k > 1 with greedy decoding: every sample would be the same program",
                              hint="set eval.temperature (e.g. 0.8) for pass@k with k > 1")

    def prepare(self, ctx: EvalContext) -> int:
        from tunesmith.eval.passk import load_code_tasks

        self.tasks = load_code_tasks(ctx.cfg.code_tasks)[: ctx.cfg.max_examples or None]
        return len(self.tasks)

    def run(self, ctx: EvalContext) -> SectionResult:
        from tunesmith.eval.passk import pass_at_k, score_tasks
        from tunesmith.eval.sandbox import SandboxLimits, isolation_layers

        cfg, tasks, n = ctx.cfg, self.tasks, ctx.cfg.code_samples
        limits = SandboxLimits(timeout_s=cfg.code_timeout_s, memory_mb=cfg.code_memory_mb)
        result = SectionResult(columns=[Column(f"pass@{k}", stats.mean, True) for k in cfg.pass_k])
        convs = [t.messages() for t in tasks for _ in range(n)]
        for spec in ctx.systems:
            with spec.active():
                flat = generate_for(ctx, spec.model, convs, ctx.progress(spec.name, "code", len(convs)),
                                    max_new_tokens=ctx.code_max_new_tokens)
            completions = [flat[i:i + n] for i in range(0, len(flat), n)]
            _, results = score_tasks(tasks, completions, cfg.pass_k, limits, workers=cfg.code_workers,
                                     progress=ctx.progress(spec.name, "sandbox", len(flat)))
            result.rows[spec.name] = {f"pass@{k}": [pass_at_k(r.n, r.passed, k) for r in results] for k in cfg.pass_k}
            for task, comps, res in zip(tasks, completions, results):
                for j, comp in enumerate(comps):
                    result.predictions.append({"system": spec.name, "id": f"{task.id}#{j}", "prompt": task.messages(),
                                               "prediction": comp, "reference": task.test,
                                               "passed": res.statuses[j] == "passed", "status": res.statuses[j]})
        result.report["code"] = {"tasks": len(tasks), "samples_per_task": n, "k": cfg.pass_k,
                                 "max_new_tokens": ctx.code_max_new_tokens or cfg.max_new_tokens,
                                 "limits": {"timeout_s": cfg.code_timeout_s, "memory_mb": cfg.code_memory_mb},
                                 "isolation": isolation_layers()}
        return result

    def notes(self, report: dict) -> list[str]:
        c = report.get("code")
        if not c:
            return []
        return [f"pass@k: {c['tasks']} tasks x {c['samples_per_task']} samples, unbiased estimator; each program "
                f"sandboxed ({', '.join(c['isolation'])}; {c['limits']['timeout_s']} s, {c['limits']['memory_mb']} MiB)."]
