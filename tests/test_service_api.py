"""``wbc serve`` API: every endpoint, bad input, concurrent edits, restarts; on SQLite and on PostgreSQL.

The PostgreSQL variant needs a server: ``WBC_TEST_POSTGRES_URL`` (``.ci/run`` starts one with
``scripts/test_services.sh``). Without it the variant is skipped, except under ``CI=true``.
Each PostgreSQL test gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from service_helpers import CELL_FIELD, png_bytes, unavailable, wait_for

from wbc.errors import WbcError
from wbc.service import ServiceSettings, create_app
from wbc.service.db import Sample, Status
from wbc.service.launcher import ServerProcess

API = "/api/v1"
FIELD = CELL_FIELD.read_bytes()


@pytest.fixture(scope="module")
def predictor():
    from wbc.inference import load_predictor
    return load_predictor(None)


def _postgres_url() -> str:
    url = os.environ.get("WBC_TEST_POSTGRES_URL")
    if not url:
        unavailable("no PostgreSQL server: set WBC_TEST_POSTGRES_URL (scripts/test_services.sh start)")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    """``None`` (SQLite file in the data folder) or a PostgreSQL URL whose search_path is a fresh schema."""
    if request.param == "sqlite":
        yield None
        return
    import psycopg
    url = _postgres_url()
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    try:
        admin = psycopg.connect(plain, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL at {url} is not reachable: {str(exc).strip().splitlines()[0]}")
    schema = f"t_{secrets.token_hex(6)}"
    admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


@pytest.fixture
def make_client(tmp_path, db_url, predictor):
    """``make_client(**settings)`` -> a running TestClient; ``start=False`` leaves the worker stopped."""
    apps = []

    def make(start: bool = True, raise_errors: bool = True, **kw):
        settings = ServiceSettings(data_dir=tmp_path / "data", db_url=db_url, **kw)
        app = create_app(settings, predictor=predictor)
        client = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=raise_errors)
        if start:
            client.__enter__()
        apps.append((client, start))
        return client

    yield make
    for client, started in apps:
        if started:
            client.__exit__(None, None, None)
        else:
            client.app.state.service.db.dispose()


@pytest.fixture
def client(make_client):
    return make_client()


def upload(client, files, **form):
    return client.post(f"{API}/samples", files=[("files", f) for f in files], data=form)


def analysed(client, sample_id: int) -> dict:
    def done():
        s = client.get(f"{API}/samples/{sample_id}").json()
        return s if s["status"] in (Status.DONE, Status.FAILED) else None
    s = wait_for(done, timeout=120)
    assert s["status"] == Status.DONE, s["error"]
    return s


def new_sample(client, n_fields: int = 2, **form) -> dict:
    r = upload(client, [(f"field{i}.jpg", FIELD, "image/jpeg") for i in range(n_fields)], **form)
    assert r.status_code == 202, r.text
    return analysed(client, r.json()["id"])


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (valid CRC)."""
    raw = png_bytes((1, 1))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]


# ----------------------------------------------------------------------------------------------


def test_health_info_docs_and_ui(client):
    h = client.get(f"{API}/health").json()
    assert h["status"] == "ok" and h["analysis_worker"] == "running"
    info = client.get(f"{API}/info").json()
    keys = [c["key"] for c in info["classes"]]
    assert len(set(keys)) == len(keys) == 8 and info["token_required"] is False
    assert client.get("/docs").status_code == 200
    assert "/api/v1/samples" in client.get(f"{API}/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    assert "cdn" not in client.get("/docs").text.lower()  # the API docs work offline too


def test_classify_reports_each_bad_file_while_the_others_succeed(client):
    truncated = FIELD[: len(FIELD) // 3]
    r = client.post(f"{API}/classify", files=[
        ("files", ("cell.jpeg", FIELD, "image/jpeg")),
        ("files", ("notes.jpg", b"just some text, not a picture", "image/jpeg")),
        ("files", ("cut.jpg", truncated, "image/jpeg")),
        ("files", ("really-a-png.txt", png_bytes(), "text/plain")),  # type by content, not by name
        ("files", ("empty.png", b"", "image/png")),
    ])
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res[0]["label"] == "eosinophil" and 0 <= res[0]["confidence"] <= 1
    assert abs(sum(res[0]["probabilities"].values()) - 1) < 1e-4
    assert res[0]["unknown"] is False and res[3]["unknown"] is True and res[3]["review"] is True  # a flat colour
    assert res[1]["status"] == 415 and "not an image" in res[1]["error"]
    assert res[2]["status"] == 422 and "cut.jpg" in res[2]["error"]
    assert "label" in res[3]
    assert res[4]["status"] == 422 and "empty" in res[4]["error"]


def test_classify_keeps_the_order_of_a_large_batch(client):
    files = [("files", (f"{i}.png", png_bytes(colour=(200, i, 160)) if i % 3 else b"junk", "image/png"))
             for i in range(70)]  # more than one inference batch of 64, bad files in between
    res = client.post(f"{API}/classify", files=files).json()["results"]
    assert [r["filename"] for r in res] == [f"{i}.png" for i in range(70)]
    assert [("error" in r) for r in res] == [i % 3 == 0 for i in range(70)]


@pytest.mark.parametrize("files,status,words", [
    ([("a.txt", b"hello", "text/plain")], 415, "not an image"),
    ([("bomb.png", bomb_png(100_000, 100_000), "image/png")], 413, "decompression bomb"),
    ([("big.png", png_bytes((2000, 1000)), "image/png")], 413, "megapixels"),
    ([("cut.jpg", FIELD[:3000], "image/jpeg")], 422, "cut.jpg"),
])
def test_classify_fails_with_the_files_status_when_nothing_is_usable(make_client, files, status, words):
    client = make_client(max_megapixels=1)
    r = client.post(f"{API}/classify", files=[("files", f) for f in files])
    assert r.status_code == status, r.text
    body = r.json()
    assert words in body["detail"] and body["results"][0]["status"] == status
    assert "Traceback" not in r.text


def test_size_limits_give_413_with_a_message(make_client):
    client = make_client(max_file_mb=0.01, max_request_mb=0.05)
    big = png_bytes((400, 400), (1, 2, 3)) + os.urandom(20_000)  # > 10 kB
    r = client.post(f"{API}/classify", files=[("files", ("big.png", big, "image/png")),
                                              ("files", ("ok.png", png_bytes(), "image/png"))])
    assert r.status_code == 200
    assert r.json()["results"][0]["status"] == 413 and "limit is 0.0 MB per file" not in r.text
    assert "per file" in r.json()["results"][0]["error"]
    r = client.post(f"{API}/classify", files=[("files", ("big.png", big, "image/png"))])
    assert r.status_code == 413 and "per file" in r.json()["detail"]
    r = client.post(f"{API}/classify", files=[("files", (f"{i}.bin", os.urandom(20_000), "image/png")) for i in range(4)])
    assert r.status_code == 413 and "per request" in r.json()["detail"]


def test_request_limit_applies_while_streaming_without_content_length(make_client):
    client = make_client(max_request_mb=0.05)

    def chunks():
        for _ in range(10):
            yield os.urandom(10_000)

    r = client.post(f"{API}/classify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "per request" in r.json()["detail"]


def test_sample_review_workflow(client, tmp_path):
    r = upload(client, [("../../etc/evil.jpg", FIELD, "image/jpeg"), ("b.jpg", FIELD, "image/jpeg"),
                        ("bad.jpg", b"\xff\xd8\xff\xe0 not really", "image/jpeg")],
               reference="P-001", wbc_count="7.5", age="40", sex="female", user="ana")
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["status"] in ("queued", "analysing") and r.headers["location"] == created["url"]
    assert [f["filename"] for f in created["fields"]] == ["evil.jpg", "b.jpg"]
    assert len(created["files"]) == 1 and created["files"][0]["filename"] == "bad.jpg"
    assert not any("evil" in p.name for p in (tmp_path / "data").rglob("*"))  # names are the server's own
    sid = created["id"]
    s = analysed(client, sid)
    assert s["differential"]["counts"] == {"eosinophil": 2} and s["differential"]["absolute"]["eosinophil"] == 7.5
    assert len(s["cells"]) == 2 and s["analysis"]["n_images"] == 2
    assert client.get(s["fields"][0]["image_url"]).headers["content-type"] == "image/jpeg"
    assert client.get(s["fields"][0]["annotated_url"]).headers["content-type"] == "image/png"
    assert client.get(s["cells"][0]["image_url"]).content[:2] == b"\xff\xd8"
    listed = client.get(f"{API}/samples").json()
    assert listed["total"] == 1 and listed["items"][0]["n_cells"] == 2
    assert client.get(f"{API}/samples?status=failed").json()["total"] == 0
    assert len(client.get(f"{API}/samples/{sid}/cells?label=eosinophils").json()) == 2  # synonyms accepted
    assert client.get(f"{API}/samples/{sid}/cells?label=lymphocyte").json() == []
    assert client.get(f"{API}/samples/{sid}/cells?label=martian").status_code == 422

    cell = s["cells"][0]
    r = client.patch(f"{API}/cells/{cell['id']}", json={"label": "lymphocyte", "user": "ana", "version": cell["version"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["cell"]["label"] == "lymphocyte" and out["cell"]["predicted_label"] == "eosinophil"
    assert out["cell"]["reviewed_by"] == "ana" and out["cell"]["version"] == cell["version"] + 1
    assert out["sample"]["differential"]["counts"] == {"eosinophil": 1, "lymphocyte": 1}
    assert out["sample"]["differential"]["percent"]["lymphocyte"] == 50.0
    # the same edit again with the old version: someone else changed it meanwhile
    r = client.patch(f"{API}/cells/{cell['id']}", json={"label": "monocyte", "user": "bob", "version": cell["version"]})
    assert r.status_code == 409 and "ana" in r.json()["detail"]
    r = client.patch(f"{API}/cells/{cell['id']}", json={"label": "monocyte", "user": "bob"},
                     headers={"If-Match": f'"{cell["version"]}"'})
    assert r.status_code == 409
    assert client.patch(f"{API}/cells/{cell['id']}", json={"label": "martian", "user": "bob"}).status_code == 422
    assert client.patch(f"{API}/cells/{cell['id']}", json={"label": "monocyte"}).status_code == 422  # who?
    # undo = reclassify back; a confirmation keeps the label and clears "for review"
    r = client.patch(f"{API}/cells/{cell['id']}", json={"label": "eosinophil", "user": "ana", "version": cell["version"] + 1})
    assert r.status_code == 200 and r.json()["sample"]["differential"]["counts"] == {"eosinophil": 2}
    other = s["cells"][1]
    r = client.patch(f"{API}/cells/{other['id']}", json={"label": "lymphocyte", "user": "ana"})
    assert r.status_code == 200
    audit = client.get(f"{API}/samples/{sid}/audit").json()
    assert [(a["action"], a["user"], a["old"], a["new"]) for a in audit] == [
        ("create", "ana", None, "2 field(s)"), ("reclassify", "ana", "eosinophil", "lymphocyte"),
        ("reclassify", "ana", "lymphocyte", "eosinophil"), ("reclassify", "ana", "eosinophil", "lymphocyte")]
    assert all(a["at"].endswith("Z") for a in audit)

    version = client.get(f"{API}/samples/{sid}").headers["etag"]
    assert client.post(f"{API}/samples/{sid}/signoff", json={"user": "ana", "version": 1}).status_code == 409
    r = client.post(f"{API}/samples/{sid}/signoff", json={"user": "Dr Who"}, headers={"If-Match": version})
    assert r.status_code == 200 and r.json()["signed_off_by"] == "Dr Who"
    r = client.patch(f"{API}/cells/{cell['id']}", json={"label": "monocyte", "user": "bob"})
    assert r.status_code == 409 and "signed off" in r.json()["detail"]
    assert client.post(f"{API}/samples/{sid}/signoff", json={"user": "ana"}).status_code == 409

    report = client.get(f"{API}/samples/{sid}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "Signed off by Dr Who" in report.text and "Eosinophil → Lymphocyte" in report.text
    exported = client.get(f"{API}/samples/{sid}/export.csv")
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [(r["label"], r["predicted_label"], r["reviewed_by"]) for r in rows] == [
        ("eosinophil", "eosinophil", "ana"), ("lymphocyte", "eosinophil", "ana")]
    assert rows[0]["field"] == "evil.jpg" and rows[0]["signed_off_by"] == "Dr Who" and rows[0]["reference"] == "P-001"

    r = client.delete(f"{API}/samples/{sid}")
    assert r.status_code == 409 and "force" in r.json()["detail"]
    assert client.delete(f"{API}/samples/{sid}?force=true&user=admin").status_code == 204
    assert client.get(f"{API}/samples/{sid}").status_code == 404
    assert client.get(cell["image_url"]).status_code == 404
    assert not (tmp_path / "data" / "samples" / str(sid)).exists()
    assert client.get(f"{API}/samples/{sid}/audit").json()[-1]["action"] == "delete"  # the trail stays


def test_concurrent_edits_never_lose_an_update(client):
    s = new_sample(client, n_fields=4)
    cells = s["cells"]
    # eight reviewers change the same cell from the same version: exactly one wins
    first = cells[0]

    def edit(label):
        return client.patch(f"{API}/cells/{first['id']}", json={"label": label, "user": label, "version": first["version"]})

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(r.status_code for r in pool.map(edit, ["lymphocyte", "monocyte", "basophil", "neutrophil"] * 2))
    assert codes == [200] + [409] * 7
    # four reviewers change four different cells at once: the differential counts all four
    with ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(lambda c: client.patch(f"{API}/cells/{c['id']}", json={"label": "monocyte", "user": "x"}),
                           cells))
    assert all(r.status_code == 200 for r in rs)
    s = client.get(f"{API}/samples/{s['id']}").json()
    assert s["differential"]["counts"] == {"monocyte": 4}
    assert len(client.get(f"{API}/samples/{s['id']}/audit").json()) == 1 + 1 + 4


def test_every_write_needs_the_token_when_set(make_client):
    client = make_client(token="s3cret-token")
    assert client.get(f"{API}/info").json()["token_required"] is True
    writes = [(m, r.path) for r in client.app.routes if isinstance(r, APIRoute) for m in r.methods
              if m in ("POST", "PUT", "PATCH", "DELETE")]
    assert len(writes) == 5
    for method, path in writes:
        url = path.replace("{sample_id}", "1").replace("{cell_id}", "1")
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = client.request(method, url, headers=headers)
            assert r.status_code == 401, (method, path)
            assert "token" in r.json()["detail"]
    r = client.post(f"{API}/classify", files=[("files", ("c.jpg", FIELD, "image/jpeg"))],
                    headers={"Authorization": "Bearer s3cret-token"})
    assert r.status_code == 200
    assert client.get(f"{API}/samples").status_code == 200  # reads stay open


def test_cross_site_and_rebound_requests_are_refused(client):
    r = client.post(f"{API}/classify", files=[("files", ("c.jpg", FIELD, "image/jpeg"))],
                    headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.json()["detail"]
    r = client.post(f"{API}/classify", files=[("files", ("c.jpg", FIELD, "image/jpeg"))],
                    headers={"Origin": "http://127.0.0.1"})
    assert r.status_code == 200
    r = client.get(f"{API}/samples", headers={"Host": "evil.example"})
    assert r.status_code == 400 and "loopback" in r.json()["detail"]


def test_deleting_a_sample_stops_its_analysis(make_client, tmp_path):
    client = make_client(start=False)
    sid = upload(client, [("a.jpg", FIELD, "image/jpeg")] * 3).json()["id"]
    analyser = client.app.state.service.analyser
    assert analyser._claim() == sid
    analyser.cancel(sid)  # what DELETE does first
    analyser.analyse(sid)  # stops at the next field and removes what it wrote
    assert not (tmp_path / "data" / "samples" / str(sid)).exists()
    assert client.get(f"{API}/samples/{sid}").json()["cells"] == []


def test_binding_beyond_loopback_requires_a_token(monkeypatch, tmp_path):
    monkeypatch.delenv("WBC_TOKEN", raising=False)
    with pytest.raises(WbcError, match="requires an API token"):
        ServiceSettings(host="0.0.0.0", data_dir=tmp_path).check()
    monkeypatch.setenv("WBC_TOKEN", "t")
    assert ServiceSettings(host="0.0.0.0", data_dir=tmp_path).check().token == "t"
    assert ServiceSettings(host="::1", data_dir=tmp_path).check()


def test_unknown_ids_and_bad_requests_are_json(make_client):
    client = make_client(raise_errors=False)
    for method, url in [("GET", "/samples/999"), ("GET", "/samples/999/cells"), ("GET", "/cells/999"),
                        ("GET", "/samples/999/report"), ("GET", "/samples/999/export.csv"), ("DELETE", "/samples/999"),
                        ("GET", "/samples/999/audit"), ("GET", "/fields/999/image"), ("GET", "/cells/999/image")]:
        r = client.request(method, API + url)
        assert r.status_code == 404 and "999" in r.json()["detail"], url
    assert client.post(f"{API}/samples/999/signoff", json={"user": "a"}).status_code == 404
    assert client.patch(f"{API}/cells/999", json={"label": "lymphocyte", "user": "a"}).status_code == 404
    r = upload(client, [("a.jpg", FIELD, "image/jpeg")], age="-3")
    assert r.status_code == 422 and r.json()["detail"].startswith("age:")
    r = upload(client, [("a.jpg", FIELD, "image/jpeg")], sex="other")
    assert r.status_code == 422
    r = client.post(f"{API}/samples", data={"reference": "x"})
    assert r.status_code == 422 and "files" in r.json()["detail"]
    r = client.patch(f"{API}/cells/1", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert client.get(f"{API}/nothing-here").json()["detail"] == "Not Found"


def test_an_unexpected_error_is_a_json_500_without_traceback(make_client, monkeypatch):
    client = make_client(raise_errors=False)
    s = new_sample(client, n_fields=1)
    import wbc.service.app as service_app
    monkeypatch.setattr(service_app, "export_csv", lambda *a: 1 / 0)
    r = client.get(f"{API}/samples/{s['id']}/export.csv")
    assert r.status_code == 500 and r.json()["detail"].startswith("internal server error (ZeroDivisionError)")
    assert "Traceback" not in r.text and "line " not in r.text


def test_results_wait_for_the_analysis_and_a_restart_resumes_it(make_client):
    stopped = make_client(start=False)  # no worker: the samples stay queued
    sid, sid2 = (upload(stopped, [("a.jpg", FIELD, "image/jpeg")]).json()["id"] for _ in range(2))
    for url in (f"/samples/{sid}/report", f"/samples/{sid}/export.csv"):
        r = stopped.get(API + url)
        assert r.status_code == 409 and "queued" in r.json()["detail"]
    assert stopped.post(f"{API}/samples/{sid}/signoff", json={"user": "a"}).status_code == 409
    with stopped.app.state.service.db.write.begin() as s:  # as if the server had died mid-analysis:
        s.get(Sample, sid).status, s.get(Sample, sid).attempts = Status.ANALYSING, 1  # once
        s.get(Sample, sid2).status, s.get(Sample, sid2).attempts = Status.ANALYSING, 2  # twice already
    client = make_client()  # a new server queues the first again and finishes it; gives up on the second
    s2 = client.get(f"{API}/samples/{sid2}").json()
    assert s2["status"] == "failed" and "stopped during this sample's analysis 2 times" in s2["error"]
    analysed(client, sid)


def test_migrations_create_exactly_the_models(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from wbc.service.db import Base, Database
    db = Database(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    db.migrate()
    db.migrate()  # idempotent
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    db.dispose()


@pytest.mark.parametrize("url,words", [("mysql://x/y", "unsupported"), ("sqlite://", "in-memory"),
                                       ("nonsense", "not a database URL")])
def test_bad_database_urls(tmp_path, url, words):
    with pytest.raises(WbcError, match=words):
        create_app(ServiceSettings(data_dir=tmp_path, db_url=url), predictor=object())


def test_killed_server_resumes_the_analysis_on_restart(tmp_path):
    """A real ``wbc serve`` is killed (SIGKILL) right after accepting a sample; the next one finishes it."""
    import httpx
    data = tmp_path / "data"
    server = ServerProcess(data).start()
    try:
        r = httpx.post(f"{server.url}{API}/samples", files=[("files", (f"f{i}.jpg", FIELD, "image/jpeg"))
                                                            for i in range(6)], timeout=60)
        assert r.status_code == 202
        sid = r.json()["id"]
    finally:
        server.kill()
    with ServerProcess(data) as server:
        def done():
            s = httpx.get(f"{server.url}{API}/samples/{sid}", timeout=10).json()
            return s if s["status"] in ("done", "failed") else None
        s = wait_for(done, timeout=120)
    assert s["status"] == "done" and len(s["cells"]) == 6


def test_serve_refuses_a_busy_port(tmp_path, capsys):
    import socket

    from wbc.cli import main
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port), "--data-dir", str(tmp_path)]) == 2
    assert "choose another --port" in capsys.readouterr().err


def test_concurrent_uploads_and_reads(client):
    """Uploads, polling and classification at once (the worker writes meanwhile): no errors."""
    errors = []

    def work(i):
        try:
            r = upload(client, [(f"{i}.jpg", FIELD, "image/jpeg")])
            assert r.status_code == 202, r.text
            for _ in range(3):
                assert client.get(f"{API}/samples/{r.json()['id']}").status_code == 200
            assert client.post(f"{API}/classify", files=[("files", ("c.jpg", FIELD, "image/jpeg"))]).status_code == 200
            return r.json()["id"]
        except AssertionError as exc:
            errors.append(exc)

    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(work, range(6)))
    assert not errors
    for sid in ids:
        analysed(client, sid)
