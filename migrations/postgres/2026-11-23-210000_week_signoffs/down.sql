DROP TABLE compliance_audit;
DROP TABLE week_signoffs;
