import json

from safeguard_flow.domain.content import ContentItem, clip
from safeguard_flow.labelling.files import VerdictWriter, read_items
from safeguard_flow.domain.verdicts import Verdict


def test_hash_ignores_trivial_differences():
    a = ContentItem.from_raw(1, "caf\u00e9 \r\n")
    b = ContentItem.from_raw(1, "cafe\u0301\n")
    assert a.content_hash == b.content_hash and a.problem is None
    assert ContentItem.from_raw(1, "cafe").content_hash != a.content_hash


def test_problem_items():
    assert ContentItem.from_raw(1, None).problem == "content is NULL"
    assert ContentItem.from_raw(1, " \n ").problem == "content is empty"
    assert "UTF-8" in ContentItem.from_raw(1, b"\xc3\x28").problem
    assert "code points" in ContentItem.from_raw(1, "a\udc80b").problem
    assert ContentItem.from_raw(1, b"ok").text == "ok"


def test_clip_keeps_head_and_tail():
    text, cut = clip("A" * 50 + "B" * 50, 40)
    assert cut and text.startswith("A") and text.endswith("B") and len(text) < 60
    assert clip("short", 40) == ("short", False)


def test_jsonl_bad_lines_become_problem_items(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"id": "a", "text": "fine"}\n'
        b'{"id": "b", "text": \n'
        b'\xff\xfe{"id": "c"}\n'
        b'[1, 2]\n'
        b'{"text": "no id"}\n'
        b'{"id": "d"}\n'
        b'\n'
        b'{"id": 7, "prompt": "alt field"}\n'
    )
    items = list(read_items(path))
    assert len(items) == 7
    assert items[0].problem is None and items[-1].content_id == "7" and items[-1].problem is None
    assert all(i.problem for i in items[1:6])


def test_csv(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b'id,text\n1,hello\n2,"multi\nline"\n3,bad \xff byte\n4,\n')
    items = list(read_items(path))
    assert [i.content_id for i in items] == ["1", "2", "3", "4"]
    assert items[1].text == "multi\nline"
    assert "UTF-8" in items[2].problem and items[3].problem == "content is empty"


def test_writer_jsonl_and_csv(tmp_path):
    v = Verdict(content_id="a", policy="spam", policy_version=1, label=1, parse_status="ok")
    for name in ("out.jsonl", "out.csv"):
        with VerdictWriter(tmp_path / name) as w:
            w.write([v, v])
        assert w.count == 2
    assert json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["label"] == 1


def test_evaluate_counts_errors_apart(tmp_path):
    """`evaluate`: compute_metrics over the truth rows the verdicts labelled; errors apart, no text needed."""
    from safeguard_flow.policy_quality.eval import score_against_truth, score_verdicts

    truth_file = tmp_path / "t.jsonl"
    truth_file.write_text('{"id": "a", "SH": 1}\n{"id": "b", "SH": 0}\n{"id": "c", "SH": 1}\n{"id": "d"}\n'
                          '{"id": "not-labelled", "SH": 1}\n')

    def mk(cid, label, status="ok"):
        return Verdict(content_id=cid, policy="self-harm", policy_version=1, label=label, parse_status=status)

    verdicts = [mk("a", 1), mk("b", 1), mk("c", None, "malformed"), mk("d", 0), mk("no-truth", 1)]
    m = score_against_truth(verdicts, truth_file, {"self-harm": "SH", "spam": "spam"})["policies"]["self-harm"]
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["errors"], m["skipped"]) == (1, 1, 0, 0, 1, 1)
    assert m["precision"] == 0.5 and m["recall"] == 1.0
    with VerdictWriter(tmp_path / "v.jsonl") as w:
        w.write(verdicts)
    text, png = score_verdicts(tmp_path / "v.jsonl", truth_file, {"self-harm": "SH"}, tmp_path / "plots" / "plot.png")
    header, _, row = text.splitlines()
    assert header.split() == ["policy", "scored", "tp", "fp", "fn", "tn", "errors", "precision", "recall", "F1"]
    assert row.split() == ["self-harm", "2", "1", "1", "0", "0", "1", "0.50", "1.00", "0.67"]
    assert png.read_bytes()[:4] == b"\x89PNG"
