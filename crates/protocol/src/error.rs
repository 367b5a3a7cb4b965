//! The client-visible errors of the API and their wire form. The HTTP status of
//! every error code is decided by the one `match` in [`ErrorCode::status`].

use serde::Serialize;

/// Every `__type` Sluice sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A model constraint was broken.
    ValidationException,
    /// The body is not valid JSON of the right shape.
    SerializationException,
    /// `X-Amz-Target` names no operation.
    UnknownOperationException,
    /// The request is well-formed but not acceptable.
    InvalidArgumentException,
    /// The stream does not exist.
    ResourceNotFoundException,
    /// The stream exists, or is in a state that forbids the call.
    ResourceInUseException,
    /// A quota was reached.
    LimitExceededException,
    /// `CurrentDeliveryStreamVersionId` did not match.
    ConcurrentModificationException,
    /// The KMS key is missing or disabled.
    InvalidKMSResourceException,
    /// The source of a put is not allowed for the stream.
    InvalidSourceException,
    /// Try again later (throttling, full buffer, storage failure).
    ServiceUnavailableException,
    /// The request is not signed.
    MissingAuthenticationTokenException,
    /// The access key id is not known.
    UnrecognizedClientException,
    /// The signature does not match, or its time is too far from now.
    InvalidSignatureException,
    /// The `Authorization` header is malformed.
    IncompleteSignatureException,
    /// The key's policy does not allow the operation on the stream.
    AccessDeniedException,
    /// The request's body did not arrive in time (HTTP 408; SDKs retry it).
    RequestTimeoutException,
}

impl ErrorCode {
    /// The HTTP status AWS uses for this error.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::ServiceUnavailableException => 503,
            ErrorCode::RequestTimeoutException => 408,
            ErrorCode::ValidationException
            | ErrorCode::SerializationException
            | ErrorCode::UnknownOperationException
            | ErrorCode::InvalidArgumentException
            | ErrorCode::ResourceNotFoundException
            | ErrorCode::ResourceInUseException
            | ErrorCode::LimitExceededException
            | ErrorCode::ConcurrentModificationException
            | ErrorCode::InvalidKMSResourceException
            | ErrorCode::InvalidSourceException
            | ErrorCode::MissingAuthenticationTokenException
            | ErrorCode::UnrecognizedClientException
            | ErrorCode::InvalidSignatureException
            | ErrorCode::IncompleteSignatureException
            | ErrorCode::AccessDeniedException => 400,
        }
    }

    /// The `__type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationException => "ValidationException",
            ErrorCode::SerializationException => "SerializationException",
            ErrorCode::UnknownOperationException => "UnknownOperationException",
            ErrorCode::InvalidArgumentException => "InvalidArgumentException",
            ErrorCode::ResourceNotFoundException => "ResourceNotFoundException",
            ErrorCode::ResourceInUseException => "ResourceInUseException",
            ErrorCode::LimitExceededException => "LimitExceededException",
            ErrorCode::ConcurrentModificationException => "ConcurrentModificationException",
            ErrorCode::InvalidKMSResourceException => "InvalidKMSResourceException",
            ErrorCode::InvalidSourceException => "InvalidSourceException",
            ErrorCode::ServiceUnavailableException => "ServiceUnavailableException",
            ErrorCode::MissingAuthenticationTokenException => "MissingAuthenticationTokenException",
            ErrorCode::UnrecognizedClientException => "UnrecognizedClientException",
            ErrorCode::InvalidSignatureException => "InvalidSignatureException",
            ErrorCode::IncompleteSignatureException => "IncompleteSignatureException",
            ErrorCode::AccessDeniedException => "AccessDeniedException",
            ErrorCode::RequestTimeoutException => "RequestTimeoutException",
        }
    }

    /// Errors whose model shape has a `code` member besides `message`.
    fn has_code_member(self) -> bool {
        matches!(self, ErrorCode::InvalidKMSResourceException | ErrorCode::InvalidSourceException)
    }
}

/// An error as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    /// What went wrong.
    pub code: ErrorCode,
    /// The human-readable message, exactly as sent.
    pub message: String,
    /// The `code` member of InvalidKMSResourceException and InvalidSourceException.
    pub detail_code: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "__type")]
    kind: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
}

impl ApiError {
    /// An error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), detail_code: None }
    }

    /// Sets the `code` member (for the two errors that have one).
    pub fn with_detail_code(mut self, detail: impl Into<String>) -> ApiError {
        self.detail_code = Some(detail.into());
        self
    }

    /// `ResourceNotFoundException` with Firehose's message.
    pub fn stream_not_found(name: &str, account: &str) -> ApiError {
        ApiError::new(
            ErrorCode::ResourceNotFoundException,
            format!("Firehose {name} under account {account} not found."),
        )
    }

    /// The awsJson 1.1 error body.
    pub fn body(&self) -> Vec<u8> {
        let code = self.code.has_code_member().then(|| self.detail_code.as_deref().unwrap_or(self.code.as_str()));
        let body = ErrorBody { kind: self.code.as_str(), message: &self.message, code };
        serde_json::to_vec(&body).expect("error bodies always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        let e = ApiError::stream_not_found("s", "000000000000");
        assert_eq!(e.code.status(), 400);
        assert_eq!(
            String::from_utf8(e.body()).unwrap(),
            r#"{"__type":"ResourceNotFoundException","message":"Firehose s under account 000000000000 not found."}"#
        );
        let slow = ApiError::new(ErrorCode::ServiceUnavailableException, "Slow down.");
        assert_eq!(slow.code.status(), 503);
        let kms = ApiError::new(ErrorCode::InvalidKMSResourceException, "m").with_detail_code("KMS.NotFoundException");
        assert_eq!(
            String::from_utf8(kms.body()).unwrap(),
            r#"{"__type":"InvalidKMSResourceException","message":"m","code":"KMS.NotFoundException"}"#
        );
    }
}
