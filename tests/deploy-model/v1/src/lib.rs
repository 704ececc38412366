//! The model as the first deploy declares it.
//!
//! The crate's name is `deploy_model`, as is deploy 2's, so
//! `std::any::type_name` gives both deploys' types the same name, as it
//! does for a type edited between two builds of one program.

use serde::{Deserialize, Serialize};

/// An order line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Price in cents.
    pub cents: u64,
    /// Quantity.
    pub qty: u32,
}

/// An order's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Status {
    /// Not paid yet.
    Open,
    /// Paid.
    Paid,
    /// On its way.
    Shipped,
}

/// The order this deploy computes.
pub fn order() -> Order {
    Order { cents: 5, qty: 3 }
}

/// The status this deploy computes.
pub fn status() -> Status {
    Status::Paid
}
