//! PDF rendering with Typst, embedded as a library.
//!
//! The report is laid out by `report.typ`, compiled against an in-memory "world": the template,
//! the report as `/data.json`, the logo as `/logo.png` or `/logo.svg`, and fonts compiled into the
//! binary (DejaVu Sans, DejaVu Sans Mono and Droid Sans Fallback for CJK). Nothing is
//! read from the network or the system's fonts, so the same documents give the same PDF on any
//! machine. The data reaches the template only through `json(...)`: strings stay strings, so a
//! name like `#import "x"` or `]` is printed, never evaluated.
//!
//! Typst memoises in process-wide caches; [`render`] evicts them after every report, so a
//! long-running caller does not grow. The daemon renders in a child process anyway (see
//! [`super::daemon`]), which keeps even the fonts out of its memory.

use std::sync::OnceLock;

use serde::Serialize;
use typst::diag::{FileError, FileResult};
use typst::foundations::{Bytes, Datetime};
use typst::syntax::{FileId, RootedPath, Source, VirtualPath, VirtualRoot};
use typst::text::{Font, FontBook};
use typst::utils::LazyHash;
use typst::{Library, LibraryExt, World};

use super::model::Report;
use super::settings::{Branding, Paper};

const TEMPLATE: &str = include_str!("report.typ");
/// Only the fonts the template uses are compiled in (typst-assets' font set would add 9 MB,
/// of which only DejaVu Sans Mono was used).
const FONTS: [&[u8]; 5] = [
    include_bytes!("../../assets/fonts/DejaVuSans.ttf"),
    include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf"),
    include_bytes!("../../assets/fonts/DejaVuSansMono.ttf"),
    include_bytes!("../../assets/fonts/DejaVuSansMono-Bold.ttf"),
    include_bytes!("../../assets/fonts/DroidSansFallbackFull.ttf"),
];
/// Lines of commands and output longer than this are wrapped for the page.
const WRAP_AT: usize = 96;
/// A run of this many characters without a space gets a break opportunity (zero-width space).
const BREAK_RUN: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot read the logo {path}: {source}")]
    Logo {
        path: String,
        source: std::io::Error,
    },
    #[error("the report template failed: {0}")]
    Template(String),
    #[error("PDF export failed: {0}")]
    Export(String),
}

/// The fonts, parsed once per process.
fn fonts() -> &'static (LazyHash<FontBook>, Vec<Font>) {
    static FONTS_CELL: OnceLock<(LazyHash<FontBook>, Vec<Font>)> = OnceLock::new();
    FONTS_CELL.get_or_init(|| {
        let fonts: Vec<Font> = FONTS
            .iter()
            .copied()
            .flat_map(|data| Font::iter(Bytes::new(data)))
            .collect();
        (LazyHash::new(FontBook::from_fonts(&fonts)), fonts)
    })
}

fn file_id(path: &str) -> FileResult<FileId> {
    let vpath = VirtualPath::new(path).map_err(|_| FileError::AccessDenied)?;
    Ok(RootedPath::new(VirtualRoot::Project, vpath).intern())
}

struct ReportWorld {
    library: LazyHash<Library>,
    main: Source,
    data: (FileId, Bytes),
    logo: Option<(FileId, Bytes)>,
    today: Datetime,
}

impl World for ReportWorld {
    fn library(&self) -> &LazyHash<Library> {
        &self.library
    }
    fn book(&self) -> &LazyHash<FontBook> {
        &fonts().0
    }
    fn main(&self) -> FileId {
        self.main.id()
    }
    fn source(&self, id: FileId) -> FileResult<Source> {
        if id == self.main.id() {
            Ok(self.main.clone())
        } else {
            Err(FileError::NotSource)
        }
    }
    fn file(&self, id: FileId) -> FileResult<Bytes> {
        if id == self.data.0 {
            return Ok(self.data.1.clone());
        }
        match &self.logo {
            Some((lid, bytes)) if *lid == id => Ok(bytes.clone()),
            // Nothing else exists: no file system, no packages, no network.
            _ => Err(FileError::AccessDenied),
        }
    }
    fn font(&self, index: usize) -> Option<Font> {
        fonts().1.get(index).cloned()
    }
    fn today(&self, _offset: Option<typst::foundations::Duration>) -> Option<Datetime> {
        Some(self.today)
    }
}

/// What the template reads from `/data.json`.
#[derive(Serialize)]
struct TemplateData<'a> {
    paper: &'static str,
    brand: BrandData<'a>,
    with_output: bool,
    report: serde_json::Value,
}

#[derive(Serialize)]
struct BrandData<'a> {
    name: &'a str,
    color: &'a str,
    footer: &'a str,
    logo: Option<String>,
}

/// Text made fit for a page: long unbroken runs get break opportunities.
fn breakable(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / BREAK_RUN * 3);
    let mut run = 0;
    for c in s.chars() {
        // Typst may break after white space, a hyphen or a slash already.
        if c.is_whitespace() || c == '-' || c == '/' {
            run = 0;
        } else {
            run += 1;
            if run > BREAK_RUN {
                out.push('\u{200B}');
                run = 1;
            }
        }
        out.push(c);
    }
    out
}

/// Commands and output: lines wrapped hard at [`WRAP_AT`] characters (raw text keeps spacing).
fn wrapped(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / WRAP_AT + 1);
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for (n, c) in line.chars().enumerate() {
            if n > 0 && n % WRAP_AT == 0 {
                out.push('\n');
            }
            out.push(c);
        }
    }
    out
}

/// Applies [`breakable`] to every string of the report, [`wrapped`] to commands and output.
fn fit_for_page(v: &mut serde_json::Value, key: Option<&str>) {
    match v {
        serde_json::Value::String(s) => {
            *s = if matches!(key, Some("command" | "output")) {
                wrapped(s)
            } else if key == Some("id") {
                // Ids (a UUID is 36 characters) stay whole so they can be copied and searched.
                std::mem::take(s)
            } else {
                breakable(s)
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| fit_for_page(x, key)),
        serde_json::Value::Object(o) => o
            .iter_mut()
            .for_each(|(k, x)| fit_for_page(x, Some(k.as_str()))),
        _ => {}
    }
}

/// Renders the report to PDF bytes. Typst's caches are evicted before returning.
pub fn render(report: &Report, branding: &Branding, paper: Paper) -> Result<Vec<u8>, RenderError> {
    let value = serde_json::to_value(report).map_err(|e| RenderError::Template(e.to_string()))?;
    render_value(value, branding, paper)
}

/// Renders a report given as JSON (what [`Report`] serializes to; the PDF child gets it so).
pub fn render_value(
    report: serde_json::Value,
    branding: &Branding,
    paper: Paper,
) -> Result<Vec<u8>, RenderError> {
    let out = render_inner(report, branding, paper);
    typst::comemo::evict(0);
    out
}

fn render_inner(
    mut report_json: serde_json::Value,
    branding: &Branding,
    paper: Paper,
) -> Result<Vec<u8>, RenderError> {
    let logo = match &branding.logo {
        Some(l) => {
            let bytes = std::fs::read(&l.path).map_err(|source| RenderError::Logo {
                path: l.path.display().to_string(),
                source,
            })?;
            let path = format!("/logo.{}", l.kind.extension());
            Some((path, Bytes::new(bytes)))
        }
        None => None,
    };
    let op_id = report_json["operation"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let with_output = report_json["appendix"]
        .as_array()
        .is_some_and(|a| a.iter().any(|r| r["output"].is_string()));
    fit_for_page(&mut report_json, None);
    let data = TemplateData {
        paper: paper.typst_name(),
        brand: BrandData {
            name: &branding.name,
            color: branding.color.as_str(),
            footer: &branding.footer,
            logo: logo.as_ref().map(|(p, _)| p.clone()),
        },
        with_output,
        report: report_json,
    };
    let data = serde_json::to_vec(&data).map_err(|e| RenderError::Template(e.to_string()))?;
    let err = |e: FileError| RenderError::Template(e.to_string());
    let main_id = file_id("/report.typ").map_err(err)?;
    let world = ReportWorld {
        library: LazyHash::new(Library::default()),
        main: Source::new(main_id, TEMPLATE.to_string()),
        data: (file_id("/data.json").map_err(err)?, Bytes::new(data)),
        logo: match logo {
            Some((p, b)) => Some((file_id(&p).map_err(err)?, b)),
            None => None,
        },
        today: today(),
    };
    let doc = typst::compile::<typst_layout::PagedDocument>(&world)
        .output
        .map_err(|diags| {
            RenderError::Template(
                diags
                    .iter()
                    .map(|d| d.message.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
    let options = typst_pdf::PdfOptions {
        ident: typst::foundations::Smart::Custom(format!("caldera-sidecar-{op_id}")),
        timestamp: Some(typst_pdf::Timestamp::new_utc(now_datetime())),
        ..Default::default()
    };
    typst_pdf::pdf(&doc, &options).map_err(|diags| {
        RenderError::Export(
            diags
                .iter()
                .map(|d| d.message.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

fn now_datetime() -> Datetime {
    let now = time::OffsetDateTime::now_utc();
    Datetime::Datetime(time::PrimitiveDateTime::new(now.date(), now.time()))
}

fn today() -> Datetime {
    Datetime::Date(time::OffsetDateTime::now_utc().date())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_small_report() {
        use serde_json::json;
        let op = json!({"operation_id": "a249d6e7-9272-439e-93d1-124e2e915a1c",
            "operation_name": "#import \"x\" ] [", "client_id": "red", "status": "finished",
            "start": "2026-11-28T15:41:48Z", "finish": "2026-11-28T15:45:45Z"});
        let links = vec![json!({"link_id": "b28deff7-a8f5-426b-8d24-0dfb51edc0fd",
            "technique_id": "T1033", "technique_name": "System Owner/User Discovery",
            "tactic": "discovery", "ability_name": "Identify active user", "host": {"name": "vm"},
            "status": "success", "event": {"start": "2026-11-28T15:41:50Z"},
            "process": {"command_line": "whoami"}})];
        let report = super::super::model::build(&op, &links, "2026-11-28T16:00:00Z");
        let branding = Branding {
            name: "ACME Security".into(),
            logo: None,
            color: super::super::settings::HexColor::parse("#1f4e79").unwrap(),
            footer: "Confidential".into(),
        };
        let pdf = render(&report, &branding, Paper::A4).unwrap();
        assert!(pdf.starts_with(b"%PDF"));
    }

    #[test]
    fn long_runs_get_break_opportunities() {
        let s = "x".repeat(50);
        let b = breakable(&s);
        assert_eq!(b.matches('\u{200B}').count(), 2);
        let mut v = serde_json::json!({"operation": {"id": s, "name": s}});
        fit_for_page(&mut v, None);
        assert_eq!(v["operation"]["id"], s.as_str(), "ids stay whole");
        assert_ne!(v["operation"]["name"], s.as_str());
        let uuid = "a249d6e7-9272-439e-93d1-124e2e915a1c";
        assert_eq!(
            breakable(uuid),
            uuid,
            "Typst breaks after hyphens by itself"
        );
        assert_eq!(breakable("short words stay"), "short words stay");
        assert_eq!(wrapped(&"y".repeat(200)).lines().count(), 3);
    }
}
