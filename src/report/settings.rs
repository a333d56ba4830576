//! Report settings: where reports go, the paper, and the branding on them.
//!
//! The user's guide named three of these `REPORT_OUTPUT_DIR`, `COMPANY_NAME` and `LOGO_PATH`; the
//! issue that built reports named them `REPORT_DIR`, `BRAND_NAME` and `BRAND_LOGO`, which say
//! better what they are beside `BRAND_COLOR`. The new names are the documented ones; the guide's
//! are still read, and when both are set the new name wins (one rule, easy to remember).
//! Branding is checked at start-up (and by `check-config`): a logo that does not exist or is
//! not PNG/SVG, or a colour that is not hex, names its key and stops the process with code 2,
//! instead of a report failing hours later.

use std::path::{Path, PathBuf};

use crate::config::keys::{Key, key};
use crate::config::{ConfigError, Layered, boolean, err, path};

pub(crate) const KEYS: &[Key] = &[
    key(
        "REPORTS_ENABLED",
        "false",
        "write REPORT_DIR/<operation id>.pdf and .navigator.json when an operation settles",
    ),
    key(
        "REPORT_DIR",
        "reports",
        "where reports are written and served from (alias: REPORT_OUTPUT_DIR)",
    ),
    key("REPORT_PAPER", "a4", "report paper size: a4 or letter"),
    key(
        "BRAND_NAME",
        "",
        "name on the report cover and footer (alias: COMPANY_NAME)",
    ),
    key(
        "BRAND_LOGO",
        "",
        "PNG or SVG logo on the report cover (alias: LOGO_PATH)",
    ),
    key(
        "BRAND_COLOR",
        "#1f4e79",
        "hex colour of the report's headings and bands (#rgb or #rrggbb)",
    ),
    key(
        "REPORT_FOOTER",
        "",
        "a line of text in every report page footer",
    ),
    key(
        "REPORT_OUTPUT_DIR",
        "",
        "former name of REPORT_DIR (REPORT_DIR wins when both are set)",
    ),
    key(
        "COMPANY_NAME",
        "",
        "former name of BRAND_NAME (BRAND_NAME wins when both are set)",
    ),
    key(
        "LOGO_PATH",
        "",
        "former name of BRAND_LOGO (BRAND_LOGO wins when both are set)",
    ),
];

/// Paper sizes a client is likely to print on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paper {
    A4,
    Letter,
}

impl Paper {
    /// The name Typst's `page(paper: …)` knows.
    pub fn typst_name(self) -> &'static str {
        match self {
            Paper::A4 => "a4",
            Paper::Letter => "us-letter",
        }
    }
}

/// A logo file, checked to exist and be PNG or SVG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logo {
    pub path: PathBuf,
    pub kind: LogoKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoKind {
    Png,
    Svg,
}

impl LogoKind {
    pub fn extension(self) -> &'static str {
        match self {
            LogoKind::Png => "png",
            LogoKind::Svg => "svg",
        }
    }
}

/// A colour as `#rrggbb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HexColor(String);

impl HexColor {
    pub fn parse(raw: &str) -> Option<Self> {
        let hex = raw.trim().strip_prefix('#')?;
        if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let full = match hex.len() {
            3 => hex.chars().flat_map(|c| [c, c]).collect(),
            6 => hex.to_string(),
            _ => return None,
        };
        Some(Self(format!("#{}", full.to_ascii_lowercase())))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct Branding {
    pub name: String,
    pub logo: Option<Logo>,
    pub color: HexColor,
    pub footer: String,
}

#[derive(Debug, Clone)]
pub struct ReportSettings {
    pub enabled: bool,
    pub dir: PathBuf,
    pub paper: Paper,
    pub branding: Branding,
    /// The executable that renders PDFs for the daemon; `None` is this very binary. Not a
    /// setting: tests, which run the daemon inside their own binary, point it at the real one.
    pub renderer: Option<PathBuf>,
}

/// The new name's value when it was set, else the old name's, else the new name's default.
fn new_or_alias<'a>(l: &'a Layered, new: &str, old: &str) -> (&'static str, &'a str) {
    let key_of = |k: &str| -> &'static str {
        KEYS.iter()
            .find(|x| x.name == k)
            .map(|x| x.name)
            .unwrap_or("REPORT_DIR")
    };
    if l.is_set(new) || l.get(old).is_empty() {
        (key_of(new), l.get(new))
    } else {
        (key_of(old), l.get(old))
    }
}

impl ReportSettings {
    pub(crate) fn parse(l: &Layered) -> Result<Self, ConfigError> {
        let (dir_key, dir) = new_or_alias(l, "REPORT_DIR", "REPORT_OUTPUT_DIR");
        let paper = match l.get("REPORT_PAPER").to_ascii_lowercase().as_str() {
            "a4" | "" => Paper::A4,
            "letter" | "us-letter" => Paper::Letter,
            other => {
                return Err(err(
                    "REPORT_PAPER",
                    format!("{other:?} is not a4 or letter"),
                ));
            }
        };
        let (_, name) = new_or_alias(l, "BRAND_NAME", "COMPANY_NAME");
        let (logo_key, logo) = new_or_alias(l, "BRAND_LOGO", "LOGO_PATH");
        let logo = if logo.is_empty() {
            None
        } else {
            Some(check_logo(logo_key, Path::new(logo))?)
        };
        let color_raw = l.get("BRAND_COLOR");
        let color = HexColor::parse(color_raw).ok_or_else(|| {
            err(
                "BRAND_COLOR",
                format!("{color_raw:?} is not a hex colour such as #1f4e79 or #c33"),
            )
        })?;
        Ok(Self {
            enabled: boolean("REPORTS_ENABLED", l.get("REPORTS_ENABLED"))?,
            dir: path(dir_key, dir)?,
            paper,
            branding: Branding {
                name: crate::document::sanitize::clean_text(name, 200),
                logo,
                color,
                footer: crate::document::sanitize::clean_text(l.get("REPORT_FOOTER"), 300),
            },
            renderer: None,
        })
    }
}

/// Reads the file's first bytes: PNG by its signature, SVG by an `<svg` element near the start.
fn check_logo(key: &str, p: &Path) -> Result<Logo, ConfigError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(1024);
    let read = std::fs::File::open(p).and_then(|f| f.take(1024).read_to_end(&mut head));
    if let Err(e) = read {
        return Err(err(key, format!("cannot read {}: {e}", p.display())));
    }
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(Logo {
            path: p.to_path_buf(),
            kind: LogoKind::Png,
        });
    }
    let text = String::from_utf8_lossy(&head);
    if text.contains("<svg") {
        return Ok(Logo {
            path: p.to_path_buf(),
            kind: LogoKind::Svg,
        });
    }
    Err(err(
        key,
        format!("{} is neither a PNG nor an SVG file", p.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadOptions;

    fn parse(env: &[(&str, &str)]) -> Result<ReportSettings, ConfigError> {
        let opts = LoadOptions {
            config_file: Some("/dev/null".into()),
            env_file: Some("/dev/null".into()),
        };
        let l = Layered::load(
            &opts,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        ReportSettings::parse(&l)
    }

    #[test]
    fn colours_are_hex() {
        assert_eq!(HexColor::parse("#C33").unwrap().as_str(), "#cc3333");
        assert_eq!(HexColor::parse("#1f4e79").unwrap().as_str(), "#1f4e79");
        for bad in ["1f4e79", "#12345", "#ggg", "red", ""] {
            assert!(HexColor::parse(bad).is_none(), "{bad}");
        }
        let e = parse(&[("BRAND_COLOR", "blue")]).unwrap_err();
        assert_eq!(e.key, "BRAND_COLOR");
    }

    #[test]
    fn new_names_win_over_the_guides() {
        let s = parse(&[("REPORT_OUTPUT_DIR", "/old"), ("COMPANY_NAME", "Old Co")]).unwrap();
        assert_eq!(s.dir, PathBuf::from("/old"));
        assert_eq!(s.branding.name, "Old Co");
        let s = parse(&[
            ("REPORT_OUTPUT_DIR", "/old"),
            ("REPORT_DIR", "/new"),
            ("COMPANY_NAME", "Old Co"),
            ("BRAND_NAME", "New Co"),
        ])
        .unwrap();
        assert_eq!(s.dir, PathBuf::from("/new"));
        assert_eq!(s.branding.name, "New Co");
        assert_eq!(parse(&[]).unwrap().dir, PathBuf::from("reports"));
    }

    #[test]
    fn logos_must_exist_and_be_png_or_svg() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.png");
        let e = parse(&[("BRAND_LOGO", missing.to_str().unwrap())]).unwrap_err();
        assert_eq!(e.key, "BRAND_LOGO");
        let e = parse(&[("LOGO_PATH", missing.to_str().unwrap())]).unwrap_err();
        assert_eq!(e.key, "LOGO_PATH", "the alias that was used is named");
        let txt = dir.path().join("logo.txt");
        std::fs::write(&txt, "hello").unwrap();
        let e = parse(&[("BRAND_LOGO", txt.to_str().unwrap())]).unwrap_err();
        assert!(e.problem.contains("neither a PNG nor an SVG"), "{e}");
        let svg = dir.path().join("logo.svg");
        std::fs::write(
            &svg,
            "<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"/>",
        )
        .unwrap();
        let s = parse(&[("BRAND_LOGO", svg.to_str().unwrap())]).unwrap();
        assert_eq!(s.branding.logo.unwrap().kind, LogoKind::Svg);
    }

    #[test]
    fn paper_is_a4_or_letter() {
        assert_eq!(parse(&[]).unwrap().paper, Paper::A4);
        assert_eq!(
            parse(&[("REPORT_PAPER", "Letter")]).unwrap().paper,
            Paper::Letter
        );
        assert_eq!(
            parse(&[("REPORT_PAPER", "a5")]).unwrap_err().key,
            "REPORT_PAPER"
        );
    }
}
