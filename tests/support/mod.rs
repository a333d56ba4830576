pub mod app;
pub mod caldera_stub;
pub mod scenarios;
pub mod search;
pub mod proxy;
