//! Photo checks shared by the server and the SDK (being written).
