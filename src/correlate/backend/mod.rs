//! Acting on alerts, through one of two backends: Elasticsearch (a guarded partial update of
//! the alert document) or Kibana (its detection-engine API). Both take a batch and answer one
//! [`Outcome`] per alert, in order; neither ever sends one request per alert.

pub mod elasticsearch;
pub mod kibana;

use super::action::{Change, Outcome};
use super::alert::Alert;

/// The client a backend needs.
pub enum Actor {
    Elasticsearch(::elasticsearch::Elasticsearch),
    Kibana(kibana::KibanaClient),
}

impl Actor {
    pub async fn apply(
        &self,
        items: &[(&Alert, &Change)],
        timeout: std::time::Duration,
    ) -> Vec<(Outcome, Option<String>)> {
        if items.is_empty() {
            return Vec::new();
        }
        match self {
            Actor::Elasticsearch(es) => elasticsearch::apply(es, items, timeout).await,
            Actor::Kibana(k) => k.apply(items).await,
        }
    }
}
