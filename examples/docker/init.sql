-- Generated from emailsync/sandbox.py (tests/test_examples.py keeps it in step). The demo HR estate.

CREATE DATABASE "tymeplushr_core";
\connect "tymeplushr_core"
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TABLE employees ( id int PRIMARY KEY, email citext UNIQUE NOT NULL, manager_email text, full_name text NOT NULL);
CREATE TABLE user_settings ( email text PRIMARY KEY, theme text NOT NULL, locale text NOT NULL, email_format text NOT NULL DEFAULT 'html');
CREATE TABLE emergency_contacts ( id int PRIMARY KEY, employee_email citext NOT NULL REFERENCES employees (email), contact_name text NOT NULL, contact_phone text NOT NULL);
CREATE TABLE projects (id int PRIMARY KEY, name text NOT NULL, members text[] NOT NULL, meta jsonb);
INSERT INTO employees VALUES (1, 'ceo@oldco.com', NULL, 'Casey CEO'), (2, 'jane.doe@oldco.com', 'ceo@oldco.com', 'Jane Doe'), (3, 'raj@oldco.com', 'jane.doe@oldco.com', 'Raj Patel'), (4, 'Raj.Patel@newco.com', NULL, 'Raj Patel (duplicate account)'), (5, 'li@partner.org', 'ceo@oldco.com', 'Li Wei');
INSERT INTO user_settings VALUES ('ceo@oldco.com', 'dark', 'en'), ('jane.doe@oldco.com', 'light', 'en'), ('jane.smith@newco.com', 'solarized', 'de');
INSERT INTO emergency_contacts VALUES (1, 'jane.doe@oldco.com', 'Sam Doe', '+1 555 0199'), (2, 'ceo@oldco.com', 'Alex Rivera', '+1 555 0142');
INSERT INTO projects VALUES (1, 'Rebrand', ARRAY['ceo@oldco.com', 'jane.doe@oldco.com', 'li@partner.org'], '{"owner": "jane.doe@oldco.com", "reviewers": ["raj@oldco.com"], "budget": 12000.50}'), (2, 'Payroll', ARRAY['li@partner.org'], '{"owner": "li@partner.org"}');

CREATE DATABASE "tymeplushr_leave";
\connect "tymeplushr_leave"
CREATE TABLE leave_requests ( id int PRIMARY KEY, employee_email text NOT NULL, approver_emails text[] NOT NULL, days int NOT NULL);
INSERT INTO leave_requests VALUES (100, 'jane.doe@oldco.com', ARRAY['ceo@oldco.com'], 3), (101, 'raj@oldco.com', ARRAY['jane.doe@oldco.com', 'ceo@oldco.com'], 1), (102, 'li@partner.org', ARRAY['ceo@oldco.com'], 5);
