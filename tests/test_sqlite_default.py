"""The embedded default: SQLite, the bundled playbooks, scratch space removed after each run."""

from __future__ import annotations

from tests.support import ROOT, StackFactory, all_events, submit, wait_for


def test_bundled_playbooks_on_sqlite(start_stack: StackFactory) -> None:
    stack = start_stack(sqlite=True, PLAYBOOKS_DIR=str(ROOT / "playbooks"))
    assert stack.database_url.startswith("sqlite")
    with stack.client() as client:
        paths = {item["path"] for item in client.get("/api/v1/playbooks").json()["items"]}
        assert paths == {"hello.yml", "ping.yml", "facts_summary.yml", "fail_demo.yml"}
        jobs = {
            name: submit(client, {"playbook": name, "inventory": "inventory/localhost.yml"})
            for name in ("hello.yml", "ping.yml", "facts_summary.yml", "fail_demo.yml")
        }
        done = {name: wait_for(client, job["id"]) for name, job in jobs.items()}
        assert {name: job["status"] for name, job in done.items()} == {
            "hello.yml": "successful",
            "ping.yml": "successful",
            "facts_summary.yml": "successful",
            "fail_demo.yml": "failed",
        }
        assert done["ping.yml"]["host_stats"]["localhost"]["ok"] == 1
        assert done["fail_demo.yml"]["host_stats"]["localhost"]["failures"] == 1
        events = all_events(client, done["hello.yml"]["id"])
        assert len(events) == done["hello.yml"]["event_count"] > 0
        assert "Hello, world!" in client.get(f"/api/v1/jobs/{done['hello.yml']['id']}/stdout").text
    # Every run's private_data_dir is gone once it finished.
    assert list(stack.work_dir.iterdir()) == []
