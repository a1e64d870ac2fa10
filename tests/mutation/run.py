"""Mutation testing of the promise-carrying modules with cosmic-ray (see tests/mutation.md).

    pip install "cosmic-ray==8.7.0"            # not in the dev extra: heavy, and not CI
    python tests/mutation/run.py                # every module in modules.toml, one at a time
    python tests/mutation/run.py kernels gate   # some; a rerun resumes where it stopped
    python tests/mutation/run.py --report       # the results table (tests/mutation.md format)

Mutants are applied to a snapshot of the committed tree (``git archive HEAD``) in ``--work``
(default: a folder in the temporary directory), never to the working tree other people use. The
snapshot imports as ``unet_deploy`` ahead of the editable install (PYTHONPATH; the kernels and
models folders are linked in as the package's subfolders), has its own Numba cache, and reuses
exported test models (``UNET_DEPLOY_TEST_MODEL_CACHE``). Each mutant runs the module's narrowed
test selection (``modules.toml``) with ``pytest -x``; a failing or timed-out run kills it.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def sh(cmd, env=None, cwd=None, check=True) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, check=check)


def snapshot(work: Path, fresh: bool) -> Path:
    tree = work / "tree"
    if fresh and tree.exists():
        sh(["rm", "-rf", tree])
    if not tree.exists():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        for sub, target in (("kernels", "../kernels"), ("models", "../models")):
            link = tree / "unet_deploy" / sub
            if not link.exists():
                link.symlink_to(target)
        (tree / "COMMIT").write_text(subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True, capture_output=True,
            text=True).stdout)
    return tree


def environment(work: Path, tree: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + os.pathsep + env.get("PYTHONPATH", "")
    env["NUMBA_CACHE_DIR"] = str(work / "numba-cache")
    env["UNET_DEPLOY_TEST_MODEL_CACHE"] = str(work / "model-cache")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def write_config(name: str, module: dict, tree: Path, out: Path) -> Path:
    common = (HERE / "common.toml").read_text()
    paths = ", ".join(json.dumps(p) for p in module["paths"])
    test_command = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {module['tests']}"
    text = common.replace(
        "[cosmic-ray]\n",
        f"[cosmic-ray]\nmodule-path = [{paths}]\ntest-command = {json.dumps(test_command)}\n", 1)
    path = out / f"{name}.toml"
    path.write_text(text)
    return path


def definition_lines(source: str, names: list[str]) -> list[tuple[int, int]]:
    """(first, last) line of each named definition: "func", "Class" or "Class.method"."""
    tree = ast.parse(source)
    found = {}

    def visit(node, prefix=""):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = prefix + child.name
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                found[qual] = (first, child.end_lineno)
                visit(child, qual + ".")

    visit(tree)
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"definitions not found: {missing}")
    return [found[n] for n in names]


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of every annotation in a module that has ``from __future__
    import annotations`` (there they are strings, never evaluated); none otherwise."""
    tree = ast.parse(source)
    if not any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
               and any(a.name == "annotations" for a in n.names) for n in tree.body):
        return []
    notes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            notes.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            notes.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            notes.append(node.annotation)
    return [((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset)) for n in notes]


def apply_filters(session: Path, tree: Path, module: dict, allow: list[str]) -> None:
    """Mark as skipped the mutants of operators not allowed, those in ``@numba.njit(...)``
    options (cache/nogil change compile caching and GIL release, never results: equivalent by
    construction, like the RemoveDecorator operator left out in config.toml), those inside
    annotations of modules with ``from __future__ import annotations`` (``X | None`` ->
    ``X & None`` in a string nothing evaluates: equivalent by construction), and those
    outside the module's ``only`` definitions."""
    import re

    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    allowed = re.compile("|".join(f"(?:{a})" for a in allow))
    ranges = {p: definition_lines((tree / p).read_text(), module["only"])
              for p in module["paths"]} if module.get("only") else None
    notes = {p: annotation_spans((tree / p).read_text()) for p in module["paths"]}
    with use_db(str(session)) as db:
        for item in list(db.pending_work_items):
            m = item.mutations[0]
            why = None
            line = (tree / m.module_path).read_text().splitlines()[m.start_pos[0] - 1]
            if not allowed.fullmatch(m.operator_name):
                why = "operator not in the allow-list"
            elif line.strip().startswith("@numba.njit("):
                why = "a JIT option (speed only)"
            elif any(a <= tuple(m.start_pos) < b for a, b in notes[str(m.module_path)]):
                why = "inside an annotation (never evaluated)"
            elif ranges is not None and not any(
                    a <= m.start_pos[0] <= b for a, b in ranges[str(m.module_path)]):
                why = "outside the guarded definitions"
            if why:
                db.set_result(item.job_id, WorkResult(output=why,
                                                      worker_outcome=WorkerOutcome.SKIPPED))
        sample = module.get("sample")
        pending = sorted(db.pending_work_items, key=lambda i: (
            str(i.mutations[0].module_path), tuple(i.mutations[0].start_pos),
            i.mutations[0].operator_name, i.mutations[0].occurrence))
        if sample and len(pending) > sample:
            import random

            keep = {i.job_id for i in random.Random(0).sample(pending, sample)}
            for item in pending:
                if item.job_id not in keep:
                    db.set_result(item.job_id, WorkResult(
                        output="not in the random sample", worker_outcome=WorkerOutcome.SKIPPED))


def run_module(name: str, module: dict, work: Path, tree: Path, allow: list[str]) -> None:
    out = work / "sessions"
    out.mkdir(exist_ok=True)
    env = environment(work, tree)
    config = write_config(name, module, tree, out)
    session = out / f"{name}.sqlite"
    if not session.exists():
        sh(["cosmic-ray", "init", config, session], env=env, cwd=tree)
        sh(["cr-filter-pragma", session], env=env, cwd=tree)
        apply_filters(session, tree, module, allow)
        baseline = sh(["cosmic-ray", "baseline", config], env=env, cwd=tree, check=False)
        if baseline.returncode:
            session.unlink()
            raise SystemExit(f"{name}: the unmutated tests fail in the snapshot; fix that first")
    sh(["cosmic-ray", "exec", config, session], env=env, cwd=tree)


def retest_survivors(name: str, module: dict, work: Path, tree: Path) -> None:
    """After tests were added: bring the snapshot's tests/ up to HEAD (the mutated sources
    stay as they were), check the unmutated selection still passes, and run the survivors
    again."""
    from cosmic_ray.work_db import WorkResultStorage, use_db

    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD", "tests"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    env = environment(work, tree)
    config = write_config(name, module, tree, work / "sessions")  # the current test selection
    session = work / "sessions" / f"{name}.sqlite"
    if sh(["cosmic-ray", "baseline", config], env=env, cwd=tree, check=False).returncode:
        raise SystemExit(f"{name}: the unmutated tests fail in the snapshot with HEAD's tests")
    with use_db(str(session)) as db:
        survived = [job for job, result in db.results
                    if result.worker_outcome == "normal" and result.test_outcome == "survived"]
        with db._session_maker.begin() as s:  # cosmic-ray has no "reset result" API
            s.query(WorkResultStorage).filter(WorkResultStorage.job_id.in_(survived)).delete(
                synchronize_session=False)
    print(f"{name}: {len(survived)} survivors pending again", flush=True)
    sh(["cosmic-ray", "exec", config, session], env=env, cwd=tree)


def summarize(session: Path, tree: Path | None = None) -> dict:
    """Counts and survivors of one session, from ``cosmic-ray dump`` (with ``tree``, each
    survivor shows its source line)."""
    dump = subprocess.run(["cosmic-ray", "dump", str(session)], check=True,
                          capture_output=True, text=True).stdout
    counts = {"killed": 0, "survived": 0, "incompetent": 0, "skipped": 0, "pending": 0}
    survivors = []
    for line in dump.splitlines():
        item, result = json.loads(line)
        m = item["mutations"][0]
        if result is None:
            counts["pending"] += 1
        elif result["worker_outcome"] == "skipped":
            counts["skipped"] += 1
        elif result["worker_outcome"] != "normal":
            counts["incompetent"] += 1
        else:
            counts[result["test_outcome"]] += 1
            if result["test_outcome"] == "survived":
                line = m["start_pos"][0]
                text = ""
                if tree is not None:
                    text = (tree / m["module_path"]).read_text().splitlines()[line - 1].strip()
                    text = f": `{text}`"
                survivors.append(f"{m['module_path']}:{line} "
                                 f"{m['operator_name'].removeprefix('core/')} "
                                 f"(col {m['start_pos'][1]}, in {m['definition_name']}){text}")
    tested = counts["killed"] + counts["survived"]
    counts["score"] = counts["killed"] / tested if tested else float("nan")
    counts["survivors"] = sorted(survivors, key=lambda s: (s.split()[0].split(":")[0],
                                                           int(s.split()[0].split(":")[1])))
    return counts


def main(argv=None) -> int:
    config = tomllib.loads((HERE / "config.toml").read_text())
    modules, allow = config["modules"], config["operators"]["allow"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"modules (default all): {', '.join(modules)}")
    ap.add_argument("--work", type=Path,
                    default=Path(tempfile.gettempdir()) / "unet-deploy-mutation")
    ap.add_argument("--fresh", action="store_true", help="new snapshot and sessions")
    ap.add_argument("--report", action="store_true", help="only print the results table")
    ap.add_argument("--retest-survivors", action="store_true",
                    help="update the snapshot's tests to HEAD and run the survivors again")
    args = ap.parse_args(argv)
    names = args.names or list(modules)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        sh(["rm", "-rf", args.work / "sessions"])
    tree = snapshot(args.work, args.fresh)
    if args.retest_survivors:
        for name in names:
            retest_survivors(name, modules[name], args.work, tree)
    elif not args.report:
        for name in names:
            run_module(name, modules[name], args.work, tree, allow)
    print(f"\nsnapshot of commit {(tree / 'COMMIT').read_text().strip()[:12]}\n")
    print("| module | mutants tested | killed | survived | score | skipped (filters) "
          "| incompetent | pending |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    details = []
    for name in names:
        session = args.work / "sessions" / f"{name}.sqlite"
        if not session.exists():
            continue
        c = summarize(session, tree)
        print(f"| {name} | {c['killed'] + c['survived']} | {c['killed']} | {c['survived']} "
              f"| {100 * c['score']:.1f} % | {c['skipped']} | {c['incompetent']} "
              f"| {c['pending']} |")
        details.append((name, c["survivors"]))
    for name, survivors in details:
        if survivors:
            print(f"\n{name} survivors:")
            for s in survivors:
                print(f"- {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
