//! Host names as the SIEM and Caldera spell them differently: `VM`, `vm.corp.example` and `vm`
//! are one host. Compared on the lower-cased first DNS label; an IP address is kept whole (its
//! first "label" would be a meaningless octet).

/// The comparable form of a host name, or `None` for an empty one.
pub fn host_label(raw: &str) -> Option<String> {
    let s = raw.trim().trim_end_matches('.');
    if s.is_empty() || s.len() > 255 {
        return None;
    }
    let lower = s.to_ascii_lowercase();
    if lower.parse::<std::net::IpAddr>().is_ok() {
        return Some(lower);
    }
    let label = lower.split('.').next().unwrap_or("");
    if label.is_empty() {
        None
    } else {
        Some(label.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_fqdn_do_not_matter() {
        assert_eq!(host_label("VM").as_deref(), Some("vm"));
        assert_eq!(host_label("vm.corp.example.").as_deref(), Some("vm"));
        assert_eq!(
            host_label("WIN-DC01.Corp.Local").as_deref(),
            Some("win-dc01")
        );
        assert_eq!(host_label("10.0.0.5").as_deref(), Some("10.0.0.5"));
        assert_eq!(host_label("  "), None);
    }
}
