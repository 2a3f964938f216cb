DROP TABLE photo_upload_chunks;
DROP TABLE photo_uploads;
DROP TABLE patrol_photos;
DROP TABLE photos;
