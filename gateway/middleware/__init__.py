"""The HTTP layers around the routes: keys, admission, body limits, multipart, JSON off the loop, metrics."""
