"""The readiness check's summary: printed, and written as markdown beside the JSON."""

from __future__ import annotations

from typing import Any

from stages.training.bench.report import render_markdown


def _step_lines(section: dict[str, Any]) -> list[str]:
    result = section["result"]
    lines = [f"{result['arch']} batch {result['batch_size']} {result['precision']} on {result['device_name']}; "
             f"MFU peak: {result['peak_source']}", ""]
    lines += render_markdown(result).splitlines()[2:]  # the bench's table and notes, without its title
    return lines


def _data_lines(section: dict[str, Any]) -> list[str]:
    r = section["result"]
    folder = r["folder"]
    return [f"- {folder['files']} JPEGs {folder['width']} x {folder['height']} ({folder['mean_bytes'] / 1e3:.0f} kB "
            f"each, {folder['classes']} classes, written in {folder['generated_s']:.1f} s), {r['arch']} train "
            f"transform, {r['workers']} workers, batch {r['micro_batch']}, pin_memory {r['pin_memory']}",
            f"- **{r['images_per_s']:.1f} images/s** steady ({r['images_per_s_per_worker']:.1f} per worker; "
            f"{r['images_per_s_with_startup']:.1f} with worker start-up; first batch after {r['first_batch_s']:.2f} s; "
            f"{r['samples_timed']} samples in {r['pass_s']:.1f} s{', stopped at the time cap' if r['stopped_early'] else ''})"]


def _verdict_lines(verdict: dict[str, Any]) -> list[str]:
    if verdict["bound"] is None:
        return [f"- {verdict['note']}"]
    lines = ["| method | step samples/s | data images/s | headroom | bound | workers needed |",
             "|---|---:|---:|---:|---|---:|"]
    for name, m in verdict["methods"].items():
        needed = "-" if m["workers_needed"] is None else f"{m['workers_needed']:.0f}"
        lines.append(f"| {name} | {m['step_samples_per_s']:.1f} | {m['data_images_per_s']:.1f} | "
                     f"{m['headroom']:.2f} | {m['bound']} | {needed} |")
    return [*lines, "", f"**{verdict['note']}**"]


def _end_to_end_lines(section: dict[str, Any]) -> list[str]:
    r = section["result"]
    lines = [f"- {r['method']} on {r['arch']}, {r['device']}, {r['precision']} (work dir {r['work_dir']})"]
    for name, c in r["commands"].items():
        state = "ok" if c["ok"] else f"FAILED (exit {c['returncode']}, missing {c['missing_outputs']})"
        lines.append(f"- {name}: {state} in {c['wall_s']:.1f} s: `{c['command'].split(' -m ', 1)[-1][:120]}`")
    facts = r["facts"]
    if "train" in facts:
        t = facts["train"]
        lines.append(f"- trained: {t['total_steps']} steps on {t['device']}, world size {t['world_size']}, "
                     f"{t['precision']}, last loss {t['last_loss']}")
    if "evaluate" in facts:
        e = facts["evaluate"]
        lines.append(f"- evaluated: {e['request']} n = {e['n']}, {e['metrics']}")
    if "report" in facts:
        lines.append(f"- table: {facts['report']['table']}")
    return lines


def _accumulation_lines(section: dict[str, Any]) -> list[str]:
    r = section["result"]
    if section["status"] == "skipped":
        return [f"- skipped: {r.get('reason')}"]
    lines = [f"- `{r['command']['command'].split(' -m ', 1)[-1]}`: exit {r['command']['returncode']}"]
    if r.get("result") is not None:
        lines.append(f"- result keys: {', '.join(sorted(r['result']))} (full record in the JSON)")
    return lines


SECTIONS = {"step": ("Step benchmark", _step_lines), "data": ("Data path", _data_lines),
            "end_to_end": ("End-to-end tiny run through the CLIs", _end_to_end_lines),
            "accumulation": ("Exact contrastive accumulation", _accumulation_lines)}


def render_summary(record: dict[str, Any]) -> str:
    """Markdown: the machine, what a GPU run measures (smoke), each section, the data-bound verdict."""
    machine = record["machine"]
    smoke = record["mode"] == "smoke"
    lines = [f"# GPU readiness check ({'CPU smoke run' if smoke else 'GPU run'}): "
             f"{'ok' if record['ok'] else 'PROBLEMS'} in {record['wall_s']:.0f} s"
             + ("" if smoke else f" (target {record['budget_s']:.0f} s: "
                f"{'met' if record['wall_s'] <= record['budget_s'] else 'missed'})"), "",
             f"- machine: {machine['device_name']}, {machine['cpus']} CPUs, torch {machine['torch']}"
             + (f", CUDA {machine['cuda']}, {machine['gpu_memory_gb']:.0f} GB, driver {machine['driver']}"
                if "gpu_memory_gb" in machine else "")]
    if smoke:
        lines += ["- tiny sizes on CPU (same code paths); **on a GPU it would measure**:",
                  *(f"  - {line}" for line in record["gpu_plan"])]
    lines.append(f"- this run: {record['preset']} sizes on {record['device']}, {record['precision']}")
    for key, (title, render) in SECTIONS.items():
        section = record["sections"].get(key)
        if section is None:
            continue
        head = f"## {title}: {section['status']} ({section['wall_s']:.1f} s)"
        body = render(section) if section.get("result") is not None else []
        if section["status"] == "failed" and section.get("error"):
            body = [*body, f"- error: {section['error']}"]
        lines += ["", head, "", *body]
        if key == "data":
            lines += ["", "## Data-bound or compute-bound", "", *_verdict_lines(record["verdict"])]
    return "\n".join(lines) + "\n"
