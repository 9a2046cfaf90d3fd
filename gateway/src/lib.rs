//! confab-gateway
