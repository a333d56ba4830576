//! `GET /api/v2/reports/<operation id>.pdf` and `…/<operation id>.navigator.json` (also
//! `…/<operation id>/navigator.json`): the files the report writer put in `REPORT_DIR`.
//!
//! The routes sit behind the same guard as health and metrics (rate limit, API key). The file
//! name is never taken from the request: the id is parsed as an operation id (a UUID, nothing
//! else) and the path is built from it, so no request can reach a file outside `REPORT_DIR`.
//! A malformed id or file name is 400, an operation without a report 404.

use std::path::{Path, PathBuf};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Format;
use crate::document::types::OperationId;

fn error(status: StatusCode, error: &'static str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

/// `<id>.pdf`, `<id>.navigator.json` → the operation id and format.
pub fn parse_file(name: &str) -> Option<(OperationId, Format)> {
    let (id, format) = if let Some(id) = name.strip_suffix(".pdf") {
        (id, Format::Pdf)
    } else if let Some(id) = name.strip_suffix(".navigator.json") {
        (id, Format::Navigator)
    } else {
        return None;
    };
    OperationId::parse(id).ok().map(|id| (id, format))
}

pub async fn serve_file(dir: PathBuf, name: String) -> Response {
    match parse_file(&name) {
        Some((id, format)) => send(&dir, &id, format).await,
        None => error(
            StatusCode::BAD_REQUEST,
            "expected <operation id>.pdf or <operation id>.navigator.json",
        ),
    }
}

pub async fn serve_navigator(dir: PathBuf, id: String) -> Response {
    match OperationId::parse(&id) {
        Ok(id) => send(&dir, &id, Format::Navigator).await,
        Err(_) => error(StatusCode::BAD_REQUEST, "malformed operation id"),
    }
}

async fn send(dir: &Path, id: &OperationId, format: Format) -> Response {
    let path = dir.join(format.file_name(id));
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let (ctype, disposition) = match format {
                Format::Pdf => ("application/pdf", format!("inline; filename=\"{id}.pdf\"")),
                _ => (
                    "application/json",
                    format!("attachment; filename=\"{id}.navigator.json\""),
                ),
            };
            let mut resp = (StatusCode::OK, bytes).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            error(StatusCode::NOT_FOUND, "no report for this operation")
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "report not readable");
            error(StatusCode::INTERNAL_SERVER_ERROR, "report not readable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uuid_file_names_are_accepted() {
        let id = "a249d6e7-9272-439e-93d1-124e2e915a1c";
        assert_eq!(parse_file(&format!("{id}.pdf")).unwrap().1, Format::Pdf);
        assert_eq!(
            parse_file(&format!("{id}.navigator.json")).unwrap().1,
            Format::Navigator
        );
        for bad in [
            "../../etc/passwd.pdf",
            "..%2F..%2Fetc%2Fpasswd.pdf",
            &format!("{id}.json"),
            &format!("../{id}.pdf"),
            ".pdf",
            &format!("{id}.PDF"),
        ] {
            assert!(parse_file(bad).is_none(), "{bad}");
        }
    }
}
