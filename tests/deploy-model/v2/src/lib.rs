//! The model as the second deploy declares it: `Order`'s fields swapped
//! and `qty` made signed, `Status`'s first two variants swapped. Deploy 1's
//! bytes decode as these types without error, into wrong values:
//! `Order { cents: 5, qty: 3 }` reads as `Order { qty: -3, cents: 3 }` and
//! `Status::Paid` as `Status::Open`.

use serde::{Deserialize, Serialize};

/// An order line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Quantity; negative for a return.
    pub qty: i32,
    /// Price in cents.
    pub cents: u64,
}

/// An order's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Status {
    /// Paid.
    Paid,
    /// Not paid yet.
    Open,
    /// On its way.
    Shipped,
}

/// The order this deploy computes.
pub fn order() -> Order {
    Order { qty: 7, cents: 9 }
}

/// The status this deploy computes.
pub fn status() -> Status {
    Status::Shipped
}
