//! Client reports, checked the way a reader would: real reports rendered from the recorded
//! operations (indexed by the daemon from the Caldera stub, or planted as the documents the
//! sidecar writes), read back with poppler's `pdftotext`, `pdfinfo` and `pdftoppm`.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use caldera_sidecar::document::{self, DocSettings, encode, types::Timestamp};
use serde_json::{Value, json};
use support::app;
use support::caldera_stub::CalderaStub;
use support::scenarios::*;
use support::search::{Search, search_url, unique_index, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_caldera-sidecar");

// ---------------------------------------------------------------------------------------------
// Reading a PDF like a reader
// ---------------------------------------------------------------------------------------------

fn tool(name: &str, args: &[&str]) -> Output {
    let out = Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("{name} not runnable ({e}): scripts/test.sh installs poppler-utils")
    });
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The text a reader sees (reading order, not layout).
fn pdf_text(pdf: &Path) -> String {
    // -raw: in the order the text was drawn, so a table cell or a figure's label and value
    // stay together (the layout order would interleave neighbouring cells' lines).
    let out = tool(
        "pdftotext",
        &["-raw", "-enc", "UTF-8", pdf.to_str().unwrap(), "-"],
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text with zero-width breaks removed and every run of white space made one space:
/// what a reader reads, whatever the line breaks.
fn squash(text: &str) -> String {
    text.replace('\u{200B}', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Pages as images (low resolution): how many were produced.
fn pdf_raster_pages(pdf: &Path) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("p");
    tool(
        "pdftoppm",
        &[
            "-r",
            "12",
            "-png",
            pdf.to_str().unwrap(),
            prefix.to_str().unwrap(),
        ],
    );
    std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count()
}

/// Every word stays inside the page's margins (1.6 cm = 45 pt, allowing a few points for glyph
/// overhang): nothing runs off the paper or into the neighbouring column's margin.
fn assert_words_inside_margins(pdf: &Path) {
    let out = tool("pdftotext", &["-bbox", pdf.to_str().unwrap(), "-"]);
    let html = String::from_utf8(out.stdout).unwrap();
    let attr = |tag: &str, name: &str| -> f64 {
        let start = tag.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        let end = start + tag[start..].find('"').unwrap();
        tag[start..end].parse().unwrap()
    };
    let mut width = 0.0;
    let mut words = 0;
    for tag in html.split('<').skip(1) {
        if tag.starts_with("page ") {
            width = attr(tag, "width");
        } else if tag.starts_with("word ") {
            words += 1;
            let (x0, x1) = (attr(tag, "xMin"), attr(tag, "xMax"));
            let word = tag.split('>').nth(1).unwrap_or("");
            assert!(
                x0 >= 40.0 && x1 <= width - 40.0,
                "word {word:?} at x {x0}..{x1} leaves the margins of a {width} pt page"
            );
        }
    }
    assert!(words > 100, "{words} words");
}

/// `(width, height)` in points of every page.
fn page_sizes(pdf: &Path) -> Vec<(f64, f64)> {
    let info = String::from_utf8(tool("pdfinfo", &[pdf.to_str().unwrap()]).stdout).unwrap();
    let pages: usize = field(&info, "Pages:").parse().unwrap();
    let out = tool(
        "pdfinfo",
        &["-f", "1", "-l", &pages.to_string(), pdf.to_str().unwrap()],
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("Page") && l.contains("size:"))
        .map(|l| {
            let v: Vec<f64> = l
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            // "Page    1 size: 595.276 x 841.89 pts (A4)": page number, width, height.
            (v[1], v[2])
        })
        .collect()
}

fn field<'a>(info: &'a str, name: &str) -> &'a str {
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("{name} missing in {info}"))
        .trim()
}

/// The "Page X of Y" footers: every page has one, numbered 1..=Y.
fn footer_pages(text: &str) -> Vec<(usize, usize)> {
    text.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("Page ")?;
            let mut words = rest.split_whitespace();
            let x = words.next()?.parse().ok()?;
            (words.next()? == "of").then_some(())?;
            Some((x, words.next()?.parse().ok()?))
        })
        .collect()
}

fn assert_pages_consistent(pdf: &Path, text: &str) -> usize {
    let raster = pdf_raster_pages(pdf);
    let footers = footer_pages(text);
    assert_eq!(footers.len(), raster, "one footer per page: {footers:?}");
    for (i, (x, y)) in footers.iter().enumerate() {
        assert_eq!((*x, *y), (i + 1, raster), "page {i} footer");
    }
    raster
}

// ---------------------------------------------------------------------------------------------
// Documents and the binary
// ---------------------------------------------------------------------------------------------

fn technique_ids(op: &Value) -> BTreeSet<String> {
    op["chain"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ability"]["technique_id"].as_str().map(String::from))
        .collect()
}

/// Indexes the documents the sidecar builds for `op` (settled), each link document passed
/// through `edit` first (to add the correlation stage's `detection` fields).
async fn plant(index: &str, op: &Value, edit: impl Fn(usize, &mut Value)) {
    use caldera_sidecar::sink::{Sink, elastic};
    let env = app::test_env("http://127.0.0.1:9", index, &[]);
    let settings = app::settings(&env);
    let es = elastic::build_client(&settings.elastic).unwrap();
    elastic::install_template(&es, index).await.unwrap();
    let shared = std::sync::Arc::new(caldera_sidecar::state::Shared::default());
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sink = Sink::new(es.clone(), &settings, shared.clone(), tx).unwrap();
    let raw = serde_json::to_string(op).unwrap();
    let parsed: caldera_sidecar::caldera::model::Operation = serde_json::from_str(&raw).unwrap();
    let finish = Timestamp::parse("2026-11-28T15:45:45Z").ok();
    let built = document::build(
        parsed,
        finish,
        true,
        Timestamp::now(),
        &DocSettings::default(),
    )
    .unwrap();
    let mut docs = Vec::new();
    let mut seq = 1_000_000u64;
    for (i, l) in built.links.iter().enumerate() {
        let mut v = serde_json::to_value(l).unwrap();
        edit(i, &mut v);
        seq += 1;
        docs.push(encode(&v, l.event.id.clone(), seq).unwrap().1);
    }
    seq += 1;
    docs.push(
        encode(&built.operation, built.operation.event.id.clone(), seq)
            .unwrap()
            .1,
    );
    let n = docs.len();
    sink.deliver(docs, true).await;
    assert_eq!(
        shared.stats.documents_indexed.get() as usize,
        n,
        "all planted"
    );
    elastic::refresh(&es, index).await.unwrap();
}

fn cli(index: &str, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(BIN);
    c.current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ELK_URL", support::search::search_url())
        .env("ELK_INDEX", index);
    for (k, v) in extra {
        c.env(k, v);
    }
    c.args(args).output().unwrap()
}

fn render(index: &str, id: &str, out: &Path, format: &str, extra: &[(&str, &str)]) {
    let o = cli(
        index,
        &[
            "report",
            id,
            "--out",
            out.to_str().unwrap(),
            "--format",
            format,
        ],
        extra,
    );
    assert!(
        o.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The layer format 4.5's required fields and types, and ours (score, colour, comment).
fn assert_valid_layer(layer: &Value, ids: &BTreeSet<String>) {
    assert!(layer["name"].as_str().is_some_and(|n| !n.is_empty()));
    assert_eq!(layer["versions"]["layer"], "4.5");
    assert_eq!(layer["domain"], "enterprise-attack");
    let techs = layer["techniques"].as_array().unwrap();
    let found: BTreeSet<String> = techs
        .iter()
        .map(|t| t["techniqueID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(&found, ids);
    for t in techs {
        let id = t["techniqueID"].as_str().unwrap();
        assert!(
            id.len() >= 5 && id.starts_with('T') && id[1..5].chars().all(|c| c.is_ascii_digit()),
            "{id}"
        );
        assert!(t["score"].is_number(), "{t}");
        let c = t["color"].as_str().unwrap();
        assert!(c.len() == 7 && c.starts_with('#'), "{c}");
        assert!(t["comment"].as_str().unwrap().contains("execution"), "{t}");
        if let Some(tac) = t.get("tactic") {
            assert!(
                tac.as_str()
                    .unwrap()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-')
            );
        }
        for m in t["metadata"].as_array().unwrap() {
            assert!(m["name"].is_string() && m["value"].is_string(), "{m}");
        }
    }
    let g = &layer["gradient"];
    assert!(g["colors"].as_array().unwrap().len() >= 2);
    assert!(g["minValue"].is_number() && g["maxValue"].is_number());
    for item in layer["legendItems"].as_array().unwrap() {
        assert!(item["label"].is_string() && item["color"].is_string());
    }
}

/// With `REPORT_SAMPLE_DIR` set, the rendered reports are copied there (the README's sample).
fn keep_sample(pdfs: &[(&Path, &str)]) {
    if let Some(dir) = std::env::var_os("REPORT_SAMPLE_DIR") {
        let dir = Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        for (p, name) in pdfs {
            std::fs::copy(p, dir.join(name)).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Op A and op B indexed by the daemon from the Caldera stub; on settle the daemon writes the
/// PDF and the layer, with each finished link's output (INCLUDE_OUTPUT), and serves them.
#[tokio::test]
async fn daemon_writes_reports_on_settle_and_serves_them() {
    let stub = CalderaStub::start().await;
    let index = unique_index("reports-daemon");
    let s = Search::new(&index);
    let reports = tempfile::tempdir().unwrap();
    stub.put_operation(op_a_finished());
    stub.put_operation(op_b_final());
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("REPORTS_ENABLED", "true"),
            ("REPORT_DIR", reports.path().to_str().unwrap()),
            ("INCLUDE_OUTPUT", "true"),
            ("BRAND_NAME", "Blue Fox Security"),
            ("REPORT_FOOTER", "Confidential: ACME only"),
            ("ENABLE_API_AUTH", "true"),
            ("API_KEY", "report-key-123"),
        ],
    );
    let r = app::start(&env).await;
    let pdf_a = reports.path().join(format!("{OP_A_ID}.pdf"));
    let pdf_b = reports.path().join(format!("{OP_B_ID}.pdf"));
    wait_for(Duration::from_secs(90), "both reports written", || async {
        (pdf_a.exists() && pdf_b.exists()).then_some(())
    })
    .await;

    // The output of a finished link was fetched once, decoded and stored.
    let links = s.links(OP_A_ID).await;
    let whoami = links
        .iter()
        .find(|l| l["link_id"] == "b28deff7-a8f5-426b-8d24-0dfb51edc0fd")
        .unwrap();
    assert_eq!(whoami["output"]["stdout"], "root\n");
    assert_eq!(whoami["output"]["exit_code"], "0");
    let b_links = s.links(OP_B_ID).await;
    let timeout_link = b_links
        .iter()
        .find(|l| l["link_id"] == "d2b97be2-968c-49a3-9ee0-e349f588da10")
        .unwrap();
    assert_eq!(
        timeout_link["output"]["stdout"],
        "Timeout reached, process killed\n"
    );

    let text = pdf_text(&pdf_a);
    let flat = squash(&text);
    assert!(flat.contains("purple-discovery-red"), "{text}");
    assert!(flat.contains("Blue Fox Security") && flat.contains("Confidential: ACME only"));
    for id in technique_ids(&op_a_finished()) {
        assert!(flat.contains(&id), "{id} missing");
    }
    assert!(
        flat.contains("Detection not assessed"),
        "no correlation data: {text}"
    );
    assert!(flat.contains("Executions (links) 26"), "{flat}");
    assert!(flat.contains("success 26"), "results by status");
    assert!(flat.contains("whoami"), "command in the appendix");
    let pages = assert_pages_consistent(&pdf_a, &text);
    assert_words_inside_margins(&pdf_a);
    assert!((5..=15).contains(&pages), "{pages} pages");

    let raw_b = pdf_text(&pdf_b);
    let text_b = squash(&raw_b);
    assert!(text_b.contains("purple-pause-resume-red"));
    assert!(
        text_b.contains("Timeout reached, process killed"),
        "output in the appendix"
    );
    assert!(text_b.contains("timeout") && text_b.contains("error"));
    assert_pages_consistent(&pdf_b, &raw_b);

    // Health says what the writer did.
    let health: Value = reqwest::Client::new()
        .get(format!("http://{}/api/v2/health", r.health_addr))
        .header("X-API-Key", "report-key-123")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rc = &health["checks"]["reports"];
    assert_eq!(rc["status"], "ok", "{rc}");
    assert_eq!(rc["enabled"], true);
    assert!(rc["written"].as_u64().unwrap() >= 2, "{rc}");

    keep_sample(&[
        (&pdf_a, "op-a-purple-discovery-red.pdf"),
        (&pdf_b, "op-b-purple-pause-resume-red.pdf"),
    ]);

    // The endpoints: guarded like the others, only files of REPORT_DIR, by operation id.
    let base = format!("http://{}/api/v2/reports", r.health_addr);
    let http = reqwest::Client::new();
    let get = |path: String, key: bool| {
        let mut req = http.get(format!("{base}/{path}"));
        if key {
            req = req.header("X-API-Key", "report-key-123");
        }
        req.send()
    };
    let no_key = get(format!("{OP_A_ID}.pdf"), false).await.unwrap();
    assert_eq!(no_key.status(), 401);
    let ok = get(format!("{OP_A_ID}.pdf"), true).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["content-type"], "application/pdf");
    assert_eq!(ok.bytes().await.unwrap(), std::fs::read(&pdf_a).unwrap());
    for path in [
        format!("{OP_A_ID}.navigator.json"),
        format!("{OP_A_ID}/navigator.json"),
    ] {
        let nav = get(path, true).await.unwrap();
        assert_eq!(nav.status(), 200);
        let layer: Value = nav.json().await.unwrap();
        assert_valid_layer(&layer, &technique_ids(&op_a_finished()));
    }
    let unknown = "00000000-0000-4000-8000-000000000000";
    assert_eq!(
        get(format!("{unknown}.pdf"), true).await.unwrap().status(),
        404
    );
    assert_eq!(
        get(format!("{unknown}/navigator.json"), true)
            .await
            .unwrap()
            .status(),
        404
    );
    // A secret next to REPORT_DIR that traversal would reach.
    std::fs::write(reports.path().join("secret.pdf"), "%PDF secret").unwrap();
    for bad in [
        "not-an-id.pdf",
        "secret.pdf",
        "..%2Fsecret.pdf",
        "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        &format!("{OP_A_ID}.exe"),
        &format!("{OP_A_ID}.pdf%00.txt"),
        "..%2F..%2F..%2Fetc%2Fpasswd/navigator.json",
    ] {
        let resp = get(bad.to_string(), true).await.unwrap();
        let code = resp.status().as_u16();
        assert!(code == 400 || code == 404, "{bad}: {code}");
        let body = resp.text().await.unwrap();
        assert!(
            !body.contains("secret") && !body.contains("root:"),
            "{bad}: {body}"
        );
    }
    assert_eq!(get("secret.pdf".into(), true).await.unwrap().status(), 400);

    // Alerts come minutes after an operation settles: when the correlation stage writes new
    // detection results (partial updates, `detection.sequence` stamped on the operation), the
    // report is written again; the other operation's report is left alone.
    let b_before = std::fs::read(&pdf_b).unwrap();
    let es = reqwest::Client::new();
    // As the stage writes them: a partial update per link document.
    let detection = json!({"status": "detected", "alert_count": 1, "rules": ["Rule from the SIEM"],
                           "first_alert_at": "2026-11-28T15:42:00Z", "time_to_detect_ms": 5000,
                           "complete": true});
    let mut bulk = String::new();
    for l in s.links(OP_A_ID).await {
        let id = format!("link-{}", l["link_id"].as_str().unwrap());
        bulk.push_str(&format!(
            "{}\n{}\n",
            json!({"update": {"_id": id}}),
            json!({"doc": {"detection": detection}})
        ));
    }
    let update = es
        .post(format!("{}/{index}/_bulk?refresh=true", search_url()))
        .header("Content-Type", "application/x-ndjson")
        .body(bulk)
        .send()
        .await
        .unwrap();
    let answer: Value = update.json().await.unwrap();
    assert_eq!(answer["errors"], false, "{answer}");
    let n = technique_ids(&op_a_finished()).len();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let update = es
        .post(format!(
            "{}/{index}/_update/op-{OP_A_ID}?refresh=true",
            search_url()
        ))
        .json(&json!({"doc": {"detection": {
            "techniques_total": n, "techniques_detected": n, "links_total": 26,
            "links_detected": 26, "links_pending": 0, "complete": true, "sequence": stamp}}}))
        .send()
        .await
        .unwrap();
    assert!(
        update.status().is_success(),
        "{}",
        update.text().await.unwrap()
    );
    let text = wait_for(
        Duration::from_secs(90),
        "report redone with the detections",
        || async {
            let t = squash(&pdf_text(&pdf_a));
            t.contains("Detection coverage 100").then_some(t)
        },
    )
    .await;
    assert!(text.contains("Rule from the SIEM"), "{text}");
    assert!(!text.contains("Detection not assessed"));
    assert_eq!(std::fs::read(&pdf_b).unwrap(), b_before, "B unchanged");
    app::stop(r).await;
    s.delete_index().await;
}

/// A report that cannot be rendered is logged and shown in health (degraded, with the
/// reason); the daemon goes on indexing.
#[tokio::test]
async fn a_failed_report_shows_in_health() {
    let stub = CalderaStub::start().await;
    let index = unique_index("reports-failed");
    let s = Search::new(&index);
    let reports = tempfile::tempdir().unwrap();
    stub.put_operation(op_c_empty_group());
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("REPORTS_ENABLED", "true"),
            ("REPORT_DIR", reports.path().to_str().unwrap()),
        ],
    );
    let mut settings = app::settings(&env);
    settings.reports.renderer = Some("/nonexistent/renderer".into());
    let r = caldera_sidecar::app::start(settings).await.unwrap();
    let check = wait_for(
        Duration::from_secs(60),
        "reports check degraded",
        || async {
            let (_, h) = app::health(&r).await;
            let c = h["checks"]["reports"].clone();
            (c["status"] == "degraded").then_some(c)
        },
    )
    .await;
    let msg = check["message"].as_str().unwrap();
    assert!(
        msg.contains(OP_C_ID) && msg.contains("cannot start"),
        "{msg}"
    );
    assert_eq!(check["failed"], 1);
    assert!(!reports.path().join(format!("{OP_C_ID}.pdf")).exists());
    assert!(s.operation(OP_C_ID).await.unwrap()["settled"] == true);
    app::stop(r).await;
    s.delete_index().await;
}

/// Documents with the correlation stage's fields: coverage and median time to detect are
/// computed from the links and printed; the layer scores and colours techniques by outcome.
#[tokio::test]
async fn detection_figures_from_planted_documents() {
    let index = unique_index("reports-detection");
    let s = Search::new(&index);
    let op = op_a_finished();
    // Link i: T1033 links detected; 3 links of other techniques not detected; one pending.
    let chain: Vec<String> = op["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ability"]["technique_id"].as_str().unwrap().to_string())
        .collect();
    let ids = technique_ids(&op);
    assert!(ids.len() >= 3, "{ids:?}");
    let mut order: Vec<&String> = ids.iter().collect();
    order.sort();
    let (detected_t, pending_t) = (order[0].clone(), order[1].clone());
    plant(&index, &op, |i, doc| {
        let t = &chain[i];
        doc["detection"] = if *t == detected_t {
            json!({"status": "detected", "alert_count": 2, "rules": ["Suspicious whoami", "Discovery burst"],
                   "first_alert_at": "2026-11-28T15:42:00Z", "time_to_detect_ms": 12_000 + 1_000 * i as u64})
        } else if *t == pending_t {
            json!({"status": "pending", "alert_count": 0, "rules": []})
        } else {
            json!({"status": "not_detected", "alert_count": 0, "rules": []})
        };
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("a.pdf");
    render(&index, OP_A_ID, &pdf, "pdf", &[]);
    let json_out = dir.path().join("a.json");
    render(&index, OP_A_ID, &json_out, "json", &[]);
    let data: Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    let det = &data["summary"]["detection"];
    let decided = ids.len() - 1;
    let expected = (1000.0 / decided as f64).round() / 10.0;
    assert_eq!(det["assessed"], true);
    assert_eq!(det["techniques_detected"], 1);
    assert_eq!(det["techniques_assessed"], decided);
    assert_eq!(det["coverage_percent"], expected);
    let median = det["median_time_to_detect"].as_str().unwrap().to_string();

    let text = pdf_text(&pdf);
    let flat = squash(&text);
    assert!(
        flat.contains(&format!("Detection coverage {expected} %")),
        "coverage {expected} in {flat}"
    );
    assert!(
        flat.contains(&format!("Techniques detected 1 of {decided}")),
        "detected of assessed"
    );
    assert!(
        flat.contains(&format!("Median time to detect {median}")),
        "median {median}"
    );
    assert!(
        flat.contains("Discovery burst, Suspicious whoami"),
        "detecting rules: {flat}"
    );
    assert!(!text.contains("Detection not assessed"));
    assert_pages_consistent(&pdf, &text);

    keep_sample(&[(&pdf, "op-a-with-detection.pdf")]);
    let nav = dir.path().join("a.navigator.json");
    render(&index, OP_A_ID, &nav, "navigator", &[]);
    let layer: Value = serde_json::from_slice(&std::fs::read(&nav).unwrap()).unwrap();
    assert_valid_layer(&layer, &ids);
    let by_id = |id: &str| {
        layer["techniques"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["techniqueID"] == id)
            .unwrap()
            .clone()
    };
    let d = by_id(&detected_t);
    assert_eq!(d["score"], 100);
    assert_eq!(d["color"], "#2e7d32");
    assert!(d["comment"].as_str().unwrap().contains("Suspicious whoami"));
    assert_eq!(by_id(&pending_t)["color"], "#f9a825");
    s.delete_index().await;
}

/// Names that are Typst markup, a right-to-left override, 3,000 characters or CJK are printed
/// as text, and the pages keep their size and count.
#[tokio::test]
async fn hostile_names_render_as_text() {
    let index = unique_index("reports-hostile");
    let s = Search::new(&index);
    let long = "Q".repeat(3_000);
    let markup = "#import \"x\" ] [ #set page(width: 1pt) $x^2$ *bold* <label> @ref //";
    let name = format!("{markup} \u{202E}evil\u{202C} 攻撃演習 {long}");
    let op = with_name(op_a_finished(), &name);
    plant(&index, &op, |i, doc| {
        if i == 0 {
            doc["ability_name"] = json!("] #pagebreak() #pagebreak() 横向移動 \u{202E}txt.exe");
            doc["host"]["name"] = json!("ホスト-1");
            doc["process"]["command_line"] =
                json!(format!("echo '#import \"y\"' ] {}", "Z".repeat(3000)));
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("hostile.pdf");
    render(&index, OP_A_ID, &pdf, "pdf", &[]);
    let text = pdf_text(&pdf);
    let plain = squash(&text);
    // `<label>` went with the sanitizer (tag-like text is stripped from names when indexed);
    // the rest is printed as typed.
    assert!(
        plain.contains("#import \"x\" ] [ #set page(width: 1pt) $x^2$ *bold* @ref //"),
        "{plain}"
    );
    assert!(plain.contains("攻撃演習") && plain.contains("横向移動") && plain.contains("ホスト-1"));
    assert!(!text.contains('\u{202E}'), "bidi override removed");
    let no_space: String = plain.chars().filter(|c| !c.is_whitespace()).collect();
    // The name was capped at 512 characters when indexed.
    assert!(no_space.contains(&"Q".repeat(300)), "long name printed");
    assert!(
        plain.contains("echo '#import \"y\"' ]"),
        "command printed as text"
    );

    let pages = assert_pages_consistent(&pdf, &text);
    assert_words_inside_margins(&pdf);
    // The same operation with plain names: the hostile one adds only what its long texts need.
    let plain_index = unique_index("reports-plain");
    plant(&plain_index, &op_a_finished(), |_, _| {}).await;
    let plain_pdf = dir.path().join("plain.pdf");
    render(&plain_index, OP_A_ID, &plain_pdf, "pdf", &[]);
    let plain_pages = pdf_raster_pages(&plain_pdf);
    assert!(
        pages >= plain_pages && pages <= plain_pages + 3,
        "hostile {pages} pages vs {plain_pages}"
    );
    for (w, h) in page_sizes(&pdf) {
        let (short, long) = if w < h { (w, h) } else { (h, w) };
        assert!(
            (short - 595.3).abs() < 1.0 && (long - 841.9).abs() < 1.0,
            "A4: {w} x {h}"
        );
    }
    s.delete_index().await;
    Search::new(&plain_index).delete_index().await;
}

/// Letter paper, an SVG or PNG logo, and the CLI's errors.
#[tokio::test]
async fn paper_logo_and_cli_errors() {
    let index = unique_index("reports-paper");
    let s = Search::new(&index);
    plant(&index, &op_b_final(), |_, _| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("logo.svg");
    std::fs::write(
        &svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" fill="#c33"/></svg>"##,
    )
    .unwrap();
    let pdf = dir.path().join("letter.pdf");
    render(
        &index,
        OP_B_ID,
        &pdf,
        "pdf",
        &[
            ("REPORT_PAPER", "letter"),
            ("BRAND_LOGO", svg.to_str().unwrap()),
            ("BRAND_COLOR", "#c33"),
        ],
    );
    for (w, h) in page_sizes(&pdf) {
        let (short, long) = if w < h { (w, h) } else { (h, w) };
        assert!(
            (short - 612.0).abs() < 1.0 && (long - 792.0).abs() < 1.0,
            "Letter: {w} x {h}"
        );
    }
    let png = dir.path().join("logo.png");
    std::fs::write(&png, TINY_PNG).unwrap();
    let pdf_png = dir.path().join("png.pdf");
    render(
        &index,
        OP_B_ID,
        &pdf_png,
        "pdf",
        &[("LOGO_PATH", png.to_str().unwrap())],
    );
    let images =
        String::from_utf8(tool("pdfimages", &["-list", pdf_png.to_str().unwrap()]).stdout).unwrap();
    assert!(
        images.lines().count() > 2,
        "the PNG logo is in the PDF: {images}"
    );

    let unknown = cli(
        &index,
        &[
            "report",
            "00000000-0000-4000-8000-000000000000",
            "--out",
            "-",
        ],
        &[],
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not in the index"));
    let bad = cli(&index, &["report", "../../etc/passwd"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = cli(&index, &["report", OP_B_ID, "--format", "docx"], &[]);
    assert_eq!(bad.status.code(), Some(2));

    // Branding is validated by check-config: key and reason, exit 2.
    for (key, value, reason) in [
        ("BRAND_COLOR", "blue", "hex colour"),
        ("BRAND_LOGO", "/nonexistent/logo.png", "cannot read"),
        ("REPORT_PAPER", "a3", "a4 or letter"),
    ] {
        let out = cli(&index, &["check-config"], &[(key, value)]);
        assert_eq!(out.status.code(), Some(2), "{key}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key) && err.contains(reason), "{err}");
    }
    let not_image = dir.path().join("logo.txt");
    std::fs::write(&not_image, "hello").unwrap();
    let out = cli(
        &index,
        &["check-config"],
        &[("BRAND_LOGO", not_image.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a PNG nor an SVG"));
    s.delete_index().await;
}

/// A 2×2 red PNG.
const TINY_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x02, 0x08, 0x02, 0x00, 0x00, 0x00, 0xfd, 0xd4, 0x9a,
    0x73, 0x00, 0x00, 0x00, 0x10, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0x00,
    0x44, 0x0c, 0x10, 0x0a, 0x00, 0x1f, 0xee, 0x03, 0xfd, 0x8b, 0x5f, 0x14, 0xd4, 0x00, 0x00, 0x00,
    0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];
