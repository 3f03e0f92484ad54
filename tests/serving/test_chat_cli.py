"""`chatforge chat`: one-shot --message, the REPL commands, and --tools executing the model's calls."""

from __future__ import annotations

import io
import json

import pytest
from conftest import PLAIN_REPLY, TOOL_REPLY, scripted_model

from chatforge.cli import main as cli_main
from chatforge.errors import ChatforgeError
from chatforge.serving import chat_cli
from chatforge.serving.chat_cli import ChatSession
from chatforge.serving.engine import Engine, SamplingParams
from chatforge.serving.toolbox import function_spec, load_tools


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain-model")
    model, tok = scripted_model("plain")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_message_answers_once(plain_dir, capsys):
    assert cli_main(["chat", "--model", str(plain_dir), "--template", "chatml", "--message", "Capital of France?"]) == 0
    assert capsys.readouterr().out == PLAIN_REPLY + "\n"


def test_repl_commands(plain_dir, capsys, monkeypatch):
    lines = iter(["hello", "/system Be brief.", "/nope", "again", "/reset", "/exit", "never read"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert chat_cli.main(["--model", str(plain_dir), "--template", "chatml"]) == 0
    out = capsys.readouterr().out
    assert out.count(PLAIN_REPLY) == 2
    assert "[system prompt set; history cleared]" in out and "[history cleared]" in out and "unknown command" in out


def test_bad_sampling_option_is_a_user_error(plain_dir, capsys):
    assert cli_main(["chat", "--model", str(plain_dir), "--temperature", "-1", "--message", "x"]) == 2
    assert "temperature" in capsys.readouterr().err


TOOLS_PY = '''
CALLS = []

def search_hotels(city: str, price_max: int = 1000) -> dict:
    """Search hotels in a city.

    Args:
        city: the city to search in
        price_max: the highest price per night
    """
    CALLS.append(city)
    return {"city": city, "total": 1, "hotels": ["北京饭店"]}

def _helper():
    pass
'''


def test_tools_are_executed_and_fed_back(tmp_path):
    path = tmp_path / "tools.py"
    path.write_text(TOOLS_PY)
    toolbox = load_tools(str(path))
    assert list(toolbox.functions) == ["search_hotels"]
    assert toolbox.specs[0]["parameters"]["required"] == ["city"]
    model, tok = scripted_model("tool")
    session = ChatSession(Engine(model, tok, "chatml"), SamplingParams(max_new_tokens=40), None, toolbox, rounds=2)
    out = io.StringIO()
    session.turn("hotels in Beijing?", out=out)
    text = out.getvalue()
    # This model always calls the tool: 3 answers (first + 2 rounds), 2 executions, then the round limit.
    assert text.count(TOOL_REPLY) == 3
    assert text.count('[tool search_hotels -> {"city": "Beijing", "total": 1, "hotels": ["北京饭店"]}]') == 2
    assert "[stopped after 2 tool rounds]" in text
    roles = [m.role for m in session.messages]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert json.loads(session.messages[2].content)["total"] == 1


def test_tool_errors_are_reported_not_raised(tmp_path):
    from chatforge.data.schema import ToolCall

    path = tmp_path / "t.py"
    path.write_text(TOOLS_PY)
    toolbox = load_tools(str(path))
    assert toolbox.call(ToolCall("search_hotels", {"town": "x"})).startswith("error: search_hotels failed: TypeError")
    assert toolbox.call(ToolCall("nope", {})).startswith("error: unknown tool 'nope'")


def test_tool_loading_errors_name_the_problem(tmp_path):
    with pytest.raises(ChatforgeError, match="no such file"):
        load_tools(str(tmp_path / "missing.py"))

    def undocumented(x: int):
        """No Args section."""

    with pytest.raises(ChatforgeError, match="undocumented"):
        function_spec(undocumented)


def test_hotel_tool_module_loads_by_name():
    toolbox = load_tools("chatforge.tools.hotel")
    assert "search_hotels" in toolbox.functions
    assert any(s["name"] == "search_hotels" for s in toolbox.specs)
