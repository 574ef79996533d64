import pytest


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The smoke benchmark world, built once per session (the fine-tuning test files share it)."""
    from harness.world import build_world

    root = tmp_path_factory.getbasetemp() / "finetune_world"
    if not (root / "world.json").is_file():
        build_world(root, "smoke", seed=0)
    return root
