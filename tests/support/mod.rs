pub mod alerts;
pub mod app;
pub mod caldera_stub;
pub mod proxy;
pub mod raw_http;
pub mod scenarios;
pub mod search;
