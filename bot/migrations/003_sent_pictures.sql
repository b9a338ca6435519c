-- The pictures as they go to the provider (sized and encoded at admission), kept until the job is delivered:
-- a job worker or a restarted bot sends these bytes as they are instead of preparing the upload again.
ALTER TABLE job_inputs ADD COLUMN sent_image BLOB;
ALTER TABLE job_inputs ADD COLUMN sent_mask BLOB;
