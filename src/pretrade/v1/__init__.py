"""Generated pretrade.v1 protobuf and gRPC code (``make proto``); never edit by hand."""
