//! One registry endpoint: transport choice, auth challenges, blob and manifest operations.
