//! confab-auth-api
