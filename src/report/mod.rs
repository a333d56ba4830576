//! Client-ready reports: a branded PDF per operation and an ATT&CK Navigator layer.
//!
//! A report is made from the index alone ([`index`]), so it works after Caldera's data is gone:
//! the operation document and its link documents become plain data ([`model`]: figures,
//! matrix, timeline, tables), which Typst lays out ([`pdf`], template `report.typ`) or which
//! becomes a Navigator layer ([`navigator`]). [`daemon`] writes `REPORT_DIR/<id>.pdf` and
//! `<id>.navigator.json` when an operation settles, rendering each PDF in a child process of the
//! same binary so the daemon's own memory stays as small as before; [`http`] serves those files.
//! Branding and paper are [`settings`].

pub mod daemon;
pub mod http;
pub mod index;
pub mod model;
pub mod navigator;
pub mod pdf;
pub mod read;
pub mod settings;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::document::types::{OperationId, Timestamp};
use settings::{Branding, HexColor, Logo, LogoKind, Paper};

/// What `caldera-sidecar report --format` produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pdf,
    Navigator,
    Json,
}

impl Format {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "pdf" => Some(Format::Pdf),
            "navigator" => Some(Format::Navigator),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
    /// The file name a report of this format gets in `REPORT_DIR`.
    pub fn file_name(self, id: &OperationId) -> String {
        match self {
            Format::Pdf => format!("{id}.pdf"),
            Format::Navigator => format!("{id}.navigator.json"),
            Format::Json => format!("{id}.json"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Read(#[from] index::ReadError),
    #[error(transparent)]
    Render(#[from] pdf::RenderError),
    #[error("{0}")]
    Other(String),
}

/// Reads an operation from the index and builds its report data.
pub async fn build_from_index(
    es: &elasticsearch::Elasticsearch,
    index_name: &str,
    id: &OperationId,
) -> Result<model::Report, ReportError> {
    let loaded = index::load(es, index_name, id).await?;
    let report = model::build(
        &loaded.operation,
        &loaded.links,
        &Timestamp::now().to_string(),
    );
    Ok(report)
}

/// The bytes of a report in `format`, rendered in this process.
pub fn produce(
    report: &model::Report,
    format: Format,
    settings: &settings::ReportSettings,
) -> Result<Vec<u8>, ReportError> {
    match format {
        Format::Pdf => Ok(pdf::render(report, &settings.branding, settings.paper)?),
        Format::Navigator => {
            let layer = navigator::layer(report, &settings.branding.name);
            serde_json::to_vec_pretty(&layer).map_err(|e| ReportError::Other(e.to_string()))
        }
        Format::Json => {
            serde_json::to_vec_pretty(report).map_err(|e| ReportError::Other(e.to_string()))
        }
    }
}

/// What a parent hands the PDF child on its standard input (see [`daemon`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct RenderJob {
    pub report: serde_json::Value,
    pub brand_name: String,
    pub brand_color: String,
    pub brand_footer: String,
    pub logo: Option<PathBuf>,
    pub letter: bool,
}

impl RenderJob {
    pub fn new(report: &model::Report, s: &settings::ReportSettings) -> Result<Self, ReportError> {
        Ok(Self {
            report: serde_json::to_value(report).map_err(|e| ReportError::Other(e.to_string()))?,
            brand_name: s.branding.name.clone(),
            brand_color: s.branding.color.as_str().to_string(),
            brand_footer: s.branding.footer.clone(),
            logo: s.branding.logo.as_ref().map(|l| l.path.clone()),
            letter: s.paper == Paper::Letter,
        })
    }

    /// Renders the job (in the child). The logo kind is read again from the file.
    pub fn render(self) -> Result<Vec<u8>, ReportError> {
        let logo = self.logo.map(|p| {
            let kind = if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
                LogoKind::Svg
            } else {
                LogoKind::Png
            };
            Logo { path: p, kind }
        });
        let branding = Branding {
            name: self.brand_name,
            logo,
            color: HexColor::parse(&self.brand_color)
                .ok_or_else(|| ReportError::Other("bad colour in render job".into()))?,
            footer: self.brand_footer,
        };
        let paper = if self.letter {
            Paper::Letter
        } else {
            Paper::A4
        };
        Ok(pdf::render_value(self.report, &branding, paper)?)
    }
}

/// Writes `bytes` to `dir/name` atomically (temporary file, then rename), creating `dir`.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
