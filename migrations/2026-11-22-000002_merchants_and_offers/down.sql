DROP TABLE link_quality_daily;
DROP TABLE offer_activations;
DROP TABLE offers;
DROP TABLE merchants;
