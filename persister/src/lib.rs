//! confab-persister
