DROP TABLE console_devices;
DROP TABLE console_sessions;
