"""Heavy session resources are released when the run leaves their folder, newest first, once."""

from __future__ import annotations

from types import SimpleNamespace

from safeguard_flow.testing.folder_scope import release_left_folders, release_when_leaving


def test_release_on_leaving_the_folder_newest_first_and_once(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    item = lambda folder, name: SimpleNamespace(path=folder / name)  # noqa: E731
    log: list[str] = []
    release_when_leaving(a, lambda: log.append("head"))
    stop_driver = release_when_leaving(a, lambda: log.append("driver"))

    release_left_folders(item(a, "test_1.py"), item(a, "test_2.py"))  # still inside a
    assert log == []
    release_left_folders(item(a, "test_2.py"), item(b, "test_3.py"))  # leaving a
    assert log == ["driver", "head"]
    stop_driver()  # the fixture's own teardown at the end of the session: nothing left to do
    release_left_folders(item(b, "test_3.py"), None)
    assert log == ["driver", "head"]


def test_last_test_of_the_session_releases_everything(tmp_path):
    log: list[str] = []
    release_when_leaving(tmp_path / "c", lambda: log.append("engine"))
    release_left_folders(SimpleNamespace(path=tmp_path / "c" / "sub" / "test_x.py"), None)
    assert log == ["engine"]
