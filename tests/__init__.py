"""imgproxy test suite: unit tests of pure steps and end-to-end tests against the real server."""
