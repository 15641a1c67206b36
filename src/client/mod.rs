//! The command-line client: parsing, talking to the name and storage servers, rendering.
