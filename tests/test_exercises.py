"""The notebooks' exercises: every instructor solution is judged correct, a wrong answer gets a hint
that does not give the answer away, None is a reminder, and the notebooks carry the check cells."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

from llmlab import exercises

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("0*.py"))
NOTEBOOKS = {
    "01": "01_first_run",
    "02": "02_continuous_batching",
    "03": "03_paged_kv_cache",
    "04": "04_vllm_inside",
    "05": "05_quantization_and_parallelism",
    "06": "06_predict_then_measure",
    "07": "07_quantization_measured",
}


def load_solution(path: Path):
    spec = importlib.util.spec_from_file_location(f"solution_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stated_answers(module) -> dict[str, str]:
    """The answer each solve_* docstring states ("... Answer: 16."), by exercise id."""
    out = {}
    for name, fn in vars(module).items():
        if name.startswith("solve_") and callable(fn):
            found = re.search(r"Answer: (\S+)\.\s*$", fn.__doc__ or "")
            assert found, f"{module.__name__}.{name}: its docstring must end with 'Answer: ...'"
            out[name.removeprefix("solve_").replace("_", ".")] = found.group(1)
    return out


def test_every_exercise_has_a_solution_file():
    assert [p.stem for p in SOLUTIONS] == list(NOTEBOOKS.values())
    ids = {e.split(".")[0] for e in exercises.EXERCISES}
    assert ids == set(NOTEBOOKS)


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solutions_are_correct(path, capsys):
    """Each solution runs the native engine as a learner would; check() (from the simulator) agrees,
    and the answer its docstring states is the one its code finds."""
    module = load_solution(path)
    answers = module.answers()
    stated = stated_answers(module)
    assert set(answers) == set(stated)
    assert set(answers) == {e for e in exercises.EXERCISES if e.startswith(path.stem[:2])}
    for exercise_id, answer in answers.items():
        verdict = exercises.check(exercise_id, answer)
        assert verdict.status == "correct", (exercise_id, answer, verdict.message)
        assert bool(verdict)
        assert "correct" in capsys.readouterr().out
        assert str(answer) == stated[exercise_id]


@pytest.mark.parametrize("exercise_id", list(exercises.EXERCISES))
def test_wrong_answers_get_a_hint_not_the_answer(exercise_id, capsys):
    expected = exercises.EXERCISES[exercise_id].expected()
    assert isinstance(expected, int) and not isinstance(expected, bool)
    value = re.compile(rf"(?<![\d.]){expected}(?![\d])")
    wrong = [expected + 1, expected - 1, 0, 200, 17, expected + 0.5, "seven", [expected], True]
    for answer in wrong:
        verdict = exercises.check(exercise_id, answer)
        printed = capsys.readouterr().out
        assert verdict.status == "wrong", (answer, verdict.message)
        assert not verdict
        assert printed.strip() == verdict.message
        assert "not quite" in printed or "give a whole number" in printed
        assert not value.search(printed), f"{exercise_id}: the hint for {answer!r} shows the answer: {printed}"


@pytest.mark.parametrize("exercise_id", list(exercises.EXERCISES))
def test_equivalent_forms_are_accepted(exercise_id, capsys):
    expected = exercises.EXERCISES[exercise_id].expected()
    for answer in (expected, float(expected), f" {expected} ", expected + 1e-9):
        assert exercises.check(exercise_id, answer).status == "correct", answer
    np = pytest.importorskip("numpy")
    assert exercises.check(exercise_id, np.int64(expected)).status == "correct"
    capsys.readouterr()


def test_none_is_not_answered_yet(capsys):
    for exercise_id in exercises.EXERCISES:
        verdict = exercises.check(exercise_id, None)
        assert verdict.status == "unanswered"
        assert not verdict
        assert "not answered yet" in capsys.readouterr().out


def test_an_unknown_id_names_the_known_ones():
    with pytest.raises(ValueError, match=r"'04\.9' is unknown.*01\.1, 01\.2, 02\.1"):
        exercises.check("04.9", 3)


def test_a_trap_gets_its_own_hint(capsys):
    assert exercises.check("01.1", 17).status == "wrong"
    assert "first output token" in capsys.readouterr().out


@pytest.mark.parametrize("prefix", list(NOTEBOOKS))
def test_notebooks_end_with_their_exercises(prefix):
    """Each core notebook checks each of its exercises once, with `answer = None` waiting for the learner."""
    nb = nbformat.read(ROOT / "notebooks" / f"{NOTEBOOKS[prefix]}.ipynb", as_version=4)
    checked = re.findall(r'llmlab\.exercises\.check\("([\d.]+)", answer\)', "\n".join(c.source for c in nb.cells))
    assert checked == [e for e in exercises.EXERCISES if e.startswith(prefix)]
    assert 2 <= len(checked) <= 3
    for cell in nb.cells:
        if "llmlab.exercises.check(" in cell.source:
            assert cell.cell_type == "code" and cell.source.startswith("answer = None")
            assert not cell.outputs
