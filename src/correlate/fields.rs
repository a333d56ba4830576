//! Reading a field of a stored document whatever its layout: Elastic Security writes alert
//! fields as literal dotted keys (`"kibana.alert.uuid": …`) while the copied source event may
//! be nested (`"host": {"name": …}`), and other tools mix both. A path is looked up by trying
//! the longest dotted key first at every level.

use serde_json::Value;

/// The value at `path` (`"process.parent.pid"`), in any mix of dotted and nested keys.
pub fn get<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let parts: Vec<&str> = path.split('.').collect();
    lookup(doc, &parts)
}

fn lookup<'a>(v: &'a Value, parts: &[&str]) -> Option<&'a Value> {
    if parts.is_empty() {
        return Some(v);
    }
    let obj = v.as_object()?;
    for i in (1..=parts.len()).rev() {
        let key = parts[..i].join(".");
        if let Some(child) = obj.get(&key)
            && let Some(found) = lookup(child, &parts[i..])
        {
            return Some(found);
        }
    }
    None
}

/// True when the document writes `kibana.alert.*` as literal dotted keys (Elastic Security's
/// own layout), so a partial update must use the same keys to replace, not duplicate, them.
pub fn dotted_alert_keys(doc: &Value) -> bool {
    doc.as_object()
        .is_some_and(|o| o.keys().any(|k| k.starts_with("kibana.alert.")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_nested_and_mixed() {
        let d = json!({"kibana.alert.uuid": "u", "host": {"name": "vm"},
                       "process": {"parent.pid": 7}, "process.Ext": {"ancestry": ["a"]}});
        assert_eq!(get(&d, "kibana.alert.uuid"), Some(&json!("u")));
        assert_eq!(get(&d, "host.name"), Some(&json!("vm")));
        assert_eq!(get(&d, "process.parent.pid"), Some(&json!(7)));
        assert_eq!(get(&d, "process.Ext.ancestry"), Some(&json!(["a"])));
        assert_eq!(get(&d, "process.pid"), None);
        assert!(dotted_alert_keys(&d));
        assert!(!dotted_alert_keys(&json!({"kibana": {"alert": {}}})));
    }
}
