//! The response encoding of the app's server functions that return data: JSON, read back with
//! `serde_json::from_str`, the reader resources already use when they hydrate from the page.
//!
//! Leptos's default `Json` reads responses with `from_slice`. In the wasm each reader is a copy
//! of every returned type's deserializer (a run's state, its events, the run list), so one
//! reader for both ways a value arrives keeps the download smaller.

use leptos::server_fn::codec::Post;
use leptos::server_fn::{Bytes, ContentType, Decodes, Encodes, Format, FormatType};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// JSON in a `POST` response body, decoded from text.
pub type JsonText = Post<JsonTextEncoding>;

/// The encoding behind [`JsonText`].
pub struct JsonTextEncoding;

impl ContentType for JsonTextEncoding {
    const CONTENT_TYPE: &'static str = "application/json";
}

impl FormatType for JsonTextEncoding {
    const FORMAT_TYPE: Format = Format::Text;
}

impl<T: Serialize> Encodes<T> for JsonTextEncoding {
    type Error = serde_json::Error;

    fn encode(output: &T) -> Result<Bytes, Self::Error> {
        serde_json::to_vec(output).map(Bytes::from)
    }
}

impl<T: DeserializeOwned> Decodes<T> for JsonTextEncoding {
    type Error = serde_json::Error;

    fn decode(bytes: Bytes) -> Result<T, Self::Error> {
        // A response that is not UTF-8 is not JSON either: the same error serde_json gives.
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| <serde_json::Error as serde::de::Error>::custom("the response is not UTF-8 text"))?;
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::JsonTextEncoding;
    use crate::protocol::RunSummary;
    use leptos::server_fn::{Decodes, Encodes};

    #[test]
    fn what_is_encoded_decodes_back_and_bad_bytes_are_an_error() {
        let runs: Vec<RunSummary> = Vec::new();
        let bytes = <JsonTextEncoding as Encodes<Vec<RunSummary>>>::encode(&runs).unwrap();
        let back: Vec<RunSummary> = <JsonTextEncoding as Decodes<Vec<RunSummary>>>::decode(bytes).unwrap();
        assert_eq!(back.len(), 0);
        let bad = <JsonTextEncoding as Decodes<Vec<RunSummary>>>::decode(vec![0xFF, 0xFE].into());
        assert!(bad.is_err());
    }
}
