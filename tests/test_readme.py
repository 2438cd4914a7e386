"""Every ```python block of README.md runs as written, each in a fresh namespace, on the real default backbone.

The blocks share one temporary cache directory (`DELTAMEM_CACHE`), so their session databases never touch the
user's; the converted backbone is linked in from the real cache when it is there, so it is not converted again.
```bash blocks are shell commands and are not run. Fast checks (blocks compile, lines fit) run without the model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks, in order."""
    return _BLOCK.findall(text)


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_the_quickstarts():
    assert len(BLOCKS) >= 3
    joined = "\n".join(BLOCKS)
    for name in ("DeltaMemChat", "ChatDeltaMem", "DeltaMemLLM"):
        assert name in joined


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_compiles(i):
    compile(BLOCKS[i], f"README.md python block {i + 1}", "exec")


def test_readme_lines_fit():
    long = [(n, len(line)) for n, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > 120]
    assert not long, f"README lines longer than 120 characters (line, length): {long}"


@pytest.fixture(scope="module")
def readme_env(tmp_path_factory):
    """A temporary DELTAMEM_CACHE (and working directory) shared by the blocks of this module."""
    from deltamem_agents.backbone import DEFAULT_MODEL_NAME, cache_dir

    real_models = cache_dir() / "models"
    tmp = tmp_path_factory.mktemp("readme")
    cache = tmp / "cache"
    cache.mkdir()
    if (real_models / DEFAULT_MODEL_NAME / "config.json").is_file():
        (cache / "models").symlink_to(real_models, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DELTAMEM_CACHE", str(cache))
        mp.chdir(tmp)
        _forget_shared_clients()  # chat models built earlier in this process point at another cache
        yield cache
        _forget_shared_clients()


def _forget_shared_clients() -> None:
    try:
        from langchain_deltamem import clear_client_cache
    except ImportError:  # the langchain extra is not installed
        return
    clear_client_cache()


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i, readme_env, capsys):
    exec(compile(BLOCKS[i], f"README.md python block {i + 1}", "exec"), {"__name__": f"readme_block_{i + 1}"})
    out = capsys.readouterr().out
    print(out)  # shown by `pytest -rP`: what the block printed
    assert out.strip(), "every README block prints something"
    assert os.environ["DELTAMEM_CACHE"] == str(readme_env)
    assert (readme_env / "sessions.db").is_file(), "the block's sessions went to the temporary cache"
