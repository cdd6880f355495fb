"""Host ranges and limit patterns, counted and checked before Ansible sees them (service/jobs/hosts.py)."""

from __future__ import annotations

import pytest

from service.jobs.hosts import check_limit, host_count


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("web01", 1),
        ("h[0:99999999]", 100_000_000),
        ("h[1:3]", 3),
        ("db[01:20].example.com", 20),
        ("h[0:99][00:99]", 10_000),
        ("h[a:z][0:999:2]", 26 * 500),
        ("h[0:10:5]", 3),
        ("h[:4]", 5),  # an empty begin is 0, as in Ansible
        ("h[5:1]", 0),
        ("h[1_0:1_2]", 3),  # Python's int() reads underscores, and so does Ansible
        ("[::1]:22", 1),
        ("h[1:3]:22", 3),
    ],
)
def test_host_count_is_what_ansible_expands(name: str, count: int) -> None:
    assert host_count(name) == count


@pytest.mark.parametrize("name", ["h[0:9:0]", "h[1]", "h[1:]", "h[01:100]", "h[z:a]", "h[1:2:3:4]", "[::1]"])
def test_a_range_ansible_cannot_expand_is_refused(name: str) -> None:
    with pytest.raises(ValueError):  # the reason varies with the case
        host_count(name)


@pytest.mark.parametrize(
    "limit",
    ["web:&prod", "all:!h3", "all[0:1]", "~h[12]", "h1,h2", "user@host", "~.*prod.*", "web:~db[0-9]+", "*3"],
)
def test_ordinary_limits_pass(limit: str) -> None:
    check_limit(limit)


@pytest.mark.parametrize(
    "limit",
    [
        "@/etc/passwd",
        " @/f",
        "h1,@/f",
        "h1:@/f",
        "all:@/f",
        "!@/f",
        "&@/f",
        "h1 @/f",
        "h[1]]@/f",
        "~(a+)+$",
        "~(a|aa)*b",
        "~.*.*.*x",
        "~(x)\\1",
        "~" + "(ab|a)" * 17,
        "~[",
        "h1,~(a*)*",
    ],
)
def test_file_reads_and_costly_regexes_are_refused(limit: str) -> None:
    with pytest.raises(ValueError):  # the reason varies with the case
        check_limit(limit)
