//! Entry points for fuzzing every decoder of bytes read from a backend.
//! Not a public API.
